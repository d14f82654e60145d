"""The inference service (`sam3lite serve`): `create_app` builds the FastAPI app."""

from sam3lite_core.serve.app import create_app

__all__ = ["create_app"]
