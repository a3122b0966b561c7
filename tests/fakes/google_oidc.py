"""A stand-in for Google as an OIDC token issuer, for the push-authentication tests.

It holds an RSA key, publishes it as a JWK Set at `certs_url` (the format
Google's https://www.googleapis.com/oauth2/v3/certs uses), and mints ID tokens
shaped like the ones Pub/Sub attaches to push requests (iss
https://accounts.google.com, aud, email, email_verified, iat/exp, kid header).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeGoogleOidc:
    def __init__(self) -> None:
        import jwt
        from cryptography.hazmat.primitives.asymmetric import rsa

        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self._key.public_key()))
        self.jwks = {"keys": [{**jwk, "kid": "fake-google-1", "use": "sig", "alg": "RS256"}]}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps(fake.jwks).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.certs_url = f"http://127.0.0.1:{self._server.server_address[1]}/oauth2/v3/certs"

    def token(self, *, audience: str, email: str, issuer: str = "https://accounts.google.com", expires_in: int = 3600,
              key: Any = None, kid: str = "fake-google-1", verified: bool = True) -> str:  # fmt: skip
        import jwt

        now = int(time.time())
        claims = {"iss": issuer, "aud": audience, "email": email, "email_verified": verified, "iat": now, "exp": now + expires_in,
                  "sub": "1234567890"}  # fmt: skip
        return jwt.encode(claims, key or self._key, algorithm="RS256", headers={"kid": kid})

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
