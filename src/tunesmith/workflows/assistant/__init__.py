"""The customized assistant (seed 000 §28.6): `assistant.yaml` -> eight resumable stages ->
a tuned, evaluated, exported and served assistant with a dossier for the client."""
