#!/bin/bash
# First-boot script of a collector instance, rendered by userdata/ at synth time; edit the template, not the
# synthesized copy. cloud-init runs it once as root; its output is in /var/log/cloud-init-output.log.
# The collector's code is too big for EC2's 16 KB user-data limit: it travels as a tar.gz in this instance's
# CloudFormation init metadata (same template), which cfn-init writes to @ARCHIVE_PATH@. This script pins the
# archive's sha256, so a code change changes the user-data and thereby replaces the instance.
set -euo pipefail
umask 022

# CloudFormation waits (CreationPolicy) for this instance's signal; report a failed boot at once instead of
# letting the deploy time out. Before aws-cfn-bootstrap is installed there is no cfn-signal: the timeout it is.
signal() {
  /opt/aws/bin/cfn-signal --exit-code "$1" --stack '@STACK@' --resource '@RESOURCE@' --region '@REGION@'
}
on_exit() {
  local status=$?
  if ((status != 0)); then
    ship_boot_log
    if [[ -x /opt/aws/bin/cfn-signal ]]; then
      signal "${status}" || true
    fi
  fi
}
trap on_exit EXIT

# The boot's log into this instance's stream of the stack's log group (the collector writes there too), so that
# a failed boot can be read without a shell. Best effort: it never changes the boot's outcome. The image's own
# python3 and aws CLI do it, as the collector's Python may be what failed to install.
ship_boot_log() {
  [[ -n "${instance_id:-}" ]] || return 0
  local events
  events=$(mktemp) || return 0
  python3 - /var/log/cloud-init-output.log /var/log/cfn-init.log > "${events}" <<'PY' || true
import json, sys, time
lines = []
for path in sys.argv[1:]:
    try:
        with open(path, errors="replace") as log:
            lines += [f"{path}: {line.rstrip()[:8000]}" for line in log if line.strip()]
    except OSError:
        pass
kept, size = [], 0
for line in reversed(lines[-5000:]):  # within PutLogEvents' limits; the last lines tell what went wrong
    size += len(line.encode()) + 26
    if size > 900_000:
        break
    kept.append(line)
now = int(time.time() * 1000)
print(json.dumps([{"timestamp": now, "message": line} for line in reversed(kept)] or [{"timestamp": now, "message": "no boot log"}]))
PY
  # Short timeouts: an unreachable CloudWatch may not hold up the signal for long.
  local target=(--region '@REGION@' --log-group-name '@LOG_GROUP@' --log-stream-name "${instance_id}"
    --cli-connect-timeout 5 --cli-read-timeout 10)
  aws logs create-log-stream "${target[@]}" 2>/dev/null || true
  aws logs put-log-events "${target[@]}" --log-events "file://${events}" > /dev/null || true
  rm -f "${events}"
}

# Package mirrors, PyPI, CloudFormation and even IMDS can be briefly unreachable while the instance comes up.
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
# Amazon Linux 2023 does not preinstall aws-cfn-bootstrap (cfn-init, cfn-signal).
retry dnf install -y @PYTHON@ aws-cfn-bootstrap

# Writes the collector archive from this instance's AWS::CloudFormation::Init metadata; then check it is the
# archive this user-data was synthesized with.
retry /opt/aws/bin/cfn-init -v --stack '@STACK@' --resource '@RESOURCE@' --region '@REGION@' --configsets default
sha256sum --check --strict <<<'@ARCHIVE_HASH@  @ARCHIVE_PATH@'

install -d -m 0755 @APP_DIR@ @ENV_DIR@
rm -rf @APP_DIR@/collector
tar -xzf @ARCHIVE_PATH@ -C @APP_DIR@

@PYTHON@ -m venv @VENV_DIR@
retry @VENV_DIR@/bin/pip install --no-cache-dir --disable-pip-version-check --only-binary=:all: \
  --require-hashes -r @APP_DIR@/collector/requirements.lock
# The service cannot write next to its code (ProtectSystem=strict), so compile the bytecode once, here.
@VENV_DIR@/bin/python -m compileall -q @APP_DIR@/collector

# Quoted here-document: the values were fixed at synth time and must reach the file unexpanded.
cat > @ENV_FILE@ <<'ENV'
COLLECTOR_BUCKET=@BUCKET@
COLLECTOR_SYMBOLS=@SYMBOLS@
COLLECTOR_WS_URL=@WS_URL@
AWS_REGION=@REGION@
AWS_DEFAULT_REGION=@REGION@
COLLECTOR_LOG_GROUP=@LOG_GROUP@
COLLECTOR_METRICS_NAMESPACE=@NAMESPACE@
ENV
echo "COLLECTOR_INSTANCE_ID=${instance_id}" >> @ENV_FILE@

cat > /etc/systemd/system/@UNIT_NAME@ <<'UNIT'
@UNIT@
UNIT
systemctl daemon-reload
# --no-block: cloud-init's own unit is still running, so waiting for the start job could deadlock boot.
systemctl enable --now --no-block @UNIT_NAME@

# Health gate for `cdk deploy`: signal success only once the collector runs and has not crashed since.
for _ in {1..60}; do
  systemctl is-active --quiet @UNIT_NAME@ && break
  sleep 2
done
sleep 20
restarts=$(systemctl show --property=NRestarts --value @UNIT_NAME@)
if ! systemctl is-active --quiet @UNIT_NAME@ || [[ "${restarts}" != 0 ]]; then
  echo "user-data: @UNIT_NAME@ is not running steadily (restarts: ${restarts})" >&2
  exit 1
fi
ship_boot_log
retry signal 0
