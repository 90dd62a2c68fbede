"""Token generator (Algorithm 1): encoder, decoder, critic, training, evaluation."""

from activedaemon.tokens.generator import TokenGenerator, shipped_encoders
from activedaemon.tokens.networks import ArchConfig, Critic, Decoder, Encoder

__all__ = ["ArchConfig", "Critic", "Decoder", "Encoder", "TokenGenerator", "shipped_encoders"]
