"""The bundled demo: a tiny table, and an NSS-layout run directory trained on it (see ``build``)."""
