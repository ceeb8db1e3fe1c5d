# shellcheck shell=sh
# Sourced by workers/Dockerfile before each pip install: a build argument that was not given
# (or given empty) must not reach pip as an empty setting. PIP_CERT_URL: a CA bundle for pip
# (a TLS-inspecting proxy's, say), fetched over plain HTTP (e.g. served on the host's
# 127.0.0.1 for a build on the host network) into /tmp/hpo-pip-ca.pem.
for name in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_FIND_LINKS PIP_TRUSTED_HOST; do
    eval "value=\${$name:-}"
    if [ -z "$value" ]; then
        unset "$name"
    else
        export "${name?}"
    fi
done
unset name value
if [ -n "${PIP_CERT_URL:-}" ]; then
    python3 -c "import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])" \
        "$PIP_CERT_URL" /tmp/hpo-pip-ca.pem
    export PIP_CERT=/tmp/hpo-pip-ca.pem
fi
