"""The inference service (`sam3lite serve`): `app.create_app` builds the FastAPI app, `state` holds the active
model, `schemas` the backend's request and response shapes."""
