"""Deployment (paper Sec. V-D): the user registry, the identity-checked HTTP service, and the
optional authenticated (unforgeable) ids.

Importing this package pulls in neither FastAPI nor SQLAlchemy; import the submodules:
``registry`` (users and audit log), ``authid`` (MAC'd ids and the image hash), ``app`` (the
FastAPI service) and ``server`` (loading runs and starting uvicorn).
"""
