#!/usr/bin/env python3
"""Verify a Palisade workload token the way an upstream service should.

A sandbox's sidecar injects `Authorization: Bearer <jwt>` for a `workloadToken`
credential. The upstream checks it against the gateway's published keys:

    verify-workload-token.py --jwks-url https://gateway.example/.well-known/jwks.json \
        --issuer https://gateway.example --audience https://api.example < token

Needs PyJWT >= 2.4 with cryptography (`pip install 'pyjwt[crypto]'`, or Debian's
python3-jwt + python3-cryptography). Prints the claims as JSON and exits 0 when
the token is valid; prints why and exits 1 when it is not.
"""

import argparse
import json
import sys

import jwt

TYP = "palisade-workload+jwt"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jwks-url", required=True, help="the gateway's /.well-known/jwks.json")
    p.add_argument("--issuer", required=True, help="the gateway's issuer (openid-configuration)")
    p.add_argument("--audience", required=True, help="this service's audience, exactly")
    p.add_argument("--token-file", default="-", help="file holding the token (default: stdin)")
    args = p.parse_args()

    raw = sys.stdin.read() if args.token_file == "-" else open(args.token_file).read()
    token = raw.strip().removeprefix("Bearer ").strip()
    try:
        # Only EdDSA, only our token type: a sandbox JWT (or anything else signed by the
        # same keys) is not a workload token.
        if jwt.get_unverified_header(token).get("typ") != TYP:
            raise jwt.InvalidTokenError(f"typ is not {TYP}")
        key = jwt.PyJWKClient(args.jwks_url).get_signing_key_from_jwt(token)
        claims = jwt.decode(
            token,
            key.key,
            algorithms=["EdDSA"],
            audience=args.audience,
            issuer=args.issuer,
            options={"require": ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]},
        )
    except (jwt.PyJWTError, OSError) as e:
        print(f"invalid workload token: {e}", file=sys.stderr)
        return 1
    print(json.dumps(claims, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
