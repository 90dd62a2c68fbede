"""ActiveDaemon: image classifiers that answer only queries carrying a user-specific token."""

from activedaemon.identity import IdentityCodec, random_user_id
from activedaemon.protect.train import load_classifier
from activedaemon.tokens import TokenGenerator

__version__ = "0.1.0"
__all__ = ["IdentityCodec", "TokenGenerator", "load_classifier", "random_user_id", "__version__"]
