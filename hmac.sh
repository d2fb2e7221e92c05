#!/usr/bin/env bash
# Sends one request signed with HMAC (HTTP signatures over the Date header) through Tyk Gateway to
# the demo API grpc-custom-auth, whose CustomKeyCheck plugin is tyk-grpc-plugin. Prints what it
# sends and the answer; exits 0 on HTTP 200. Needs only bash, openssl and curl.
#
# Every input is an environment variable; the defaults are the tyk-demo's.
set -euo pipefail

BASE_URL=${BASE_URL:-http://tyk-gateway.localhost:8080}
ENDPOINT=${ENDPOINT:-/grpc-custom-auth/get}
KEY=${KEY:-eyJvcmciOiI1ZTlkOTU0NGExZGNkNjAwMDFkMGVkMjAiLCJpZCI6ImdycGNfaG1hY19rZXkiLCJoIjoibXVybXVyNjQifQ==}
HMAC_SECRET=${HMAC_SECRET:-c2VjcmV0}
HMAC_ALGORITHM=${HMAC_ALGORITHM:-hmac-sha512}

case "$HMAC_ALGORITHM" in
  hmac-sha1 | hmac-sha256 | hmac-sha384 | hmac-sha512) digest=${HMAC_ALGORITHM#hmac-} ;;
  *)
    echo "hmac.sh: HMAC_ALGORITHM must be hmac-sha1, hmac-sha256, hmac-sha384 or hmac-sha512" >&2
    exit 2
    ;;
esac

# An RFC 7231 date, as the Date header carries it; the server refuses dates outside its clock skew.
date=$(LC_ALL=C date -u '+%a, %d %b %Y %H:%M:%S GMT')
signature=$(printf 'date: %s' "$date" | openssl dgst "-$digest" -hmac "$HMAC_SECRET" -binary | openssl base64 -A)
# Base64's + / = percent-encoded, as Tyk's clients send it.
signature=${signature//+/%2B}
signature=${signature//\//%2F}
signature=${signature//=/%3D}
authorization="Signature keyId=\"$KEY\",algorithm=\"$HMAC_ALGORITHM\",signature=\"$signature\""

echo "GET $BASE_URL$ENDPOINT"
echo "Date: $date"
echo "Authorization: $authorization"
echo
response=$(curl --silent --show-error --write-out '\n%{http_code}' \
  --header "Date: $date" --header "Authorization: $authorization" "$BASE_URL$ENDPOINT")
status=${response##*$'\n'}
echo "${response%$'\n'*}"
echo "HTTP $status"
[ "$status" = 200 ]
