#!/bin/bash
# First-boot script of a collector instance, rendered by userdata/ at synth time; edit the template, not the
# synthesized copy. cloud-init runs it once as root; its output is in /var/log/cloud-init-output.log.
set -euo pipefail
umask 022

# Package mirrors, PyPI and even IMDS can be briefly unreachable while the instance comes up.
retry() {
  local attempt
  for attempt in 1 2 3 4 5; do
    "$@" && return 0
    echo "user-data: attempt ${attempt}/5 of '$*' failed" >&2
    sleep $((attempt * 10))
  done
  return 1
}

imds=http://169.254.169.254/latest
imds_token=$(retry curl -fsS -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 300" "${imds}/api/token")
instance_id=$(retry curl -fsS -H "X-aws-ec2-metadata-token: ${imds_token}" "${imds}/meta-data/instance-id")

# The image's /usr/bin/python3 is 3.9 for the life of AL2023; the collector needs a separate newer package.
retry dnf install -y @PYTHON@

install -d -m 0755 @APP_DIR@ @ENV_DIR@
rm -rf @APP_DIR@/collector
base64 -d <<'ARCHIVE' | tar -xz -C @APP_DIR@
@ARCHIVE@
ARCHIVE

@PYTHON@ -m venv @VENV_DIR@
retry @VENV_DIR@/bin/pip install --no-cache-dir --disable-pip-version-check --only-binary=:all: \
  -r @APP_DIR@/collector/requirements.txt
# The service cannot write next to its code (ProtectSystem=strict), so compile the bytecode once, here.
@VENV_DIR@/bin/python -m compileall -q @APP_DIR@/collector

# Quoted here-document: the values were fixed at synth time and must reach the file unexpanded.
cat > @ENV_FILE@ <<'ENV'
COLLECTOR_BUCKET=@BUCKET@
COLLECTOR_SYMBOLS=@SYMBOLS@
COLLECTOR_WS_URL=@WS_URL@
AWS_REGION=@REGION@
AWS_DEFAULT_REGION=@REGION@
ENV
echo "COLLECTOR_INSTANCE_ID=${instance_id}" >> @ENV_FILE@

cat > /etc/systemd/system/@UNIT_NAME@ <<'UNIT'
@UNIT@
UNIT
systemctl daemon-reload
# --no-block: cloud-init's own unit is still running, so waiting for the start job could deadlock boot.
systemctl enable --now --no-block @UNIT_NAME@
