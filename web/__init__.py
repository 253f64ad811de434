"""The web client's Python side: the generated protocol module and the build's freshness.

The front end itself is TypeScript in `web/src/`, bundled into `web/dist/` (committed) and
served by the auth service (services/auth/web.py).
"""
