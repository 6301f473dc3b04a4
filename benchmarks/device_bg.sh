#!/bin/bash
# A benchmark longer than one device call (10 min), run in the background of the warm machine.
# Unpacks the carried packages (.carry/site.tar.xz, carry_wheels.py) into /tmp/site, writes the
# full-size random weights to /tmp/itd-weights unless there, runs the command, touches
# /tmp/bg.done. /tmp/pack.sh packs the logs so far into $OUT/res.tgz: call it in every call.
#
#   first call (carry [".carry"]):
#     rm -f /tmp/bg.done; setsid nohup bash benchmarks/device_bg.sh python benchmarks/farm_gpu.py \
#       --weights /tmp/itd-weights --seconds 60 --kill 5 --kill-after 20 > /tmp/bg.log 2>&1 < /dev/null &
#     then wait in a loop: while [ ! -f /tmp/bg.done ] && [ $SECONDS -lt 540 ]; do sleep 15; done; bash /tmp/pack.sh
#   later calls (no carry; the machine releases after 30 s idle): the same wait loop.
set -u
cd "$(dirname "$0")/.."
mkdir -p /tmp/res /tmp/site
cat > /tmp/pack.sh <<'P'
#!/bin/bash
mkdir -p "${OUT:?}"
cp /tmp/bg.log /tmp/res/ 2>/dev/null
nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv > /tmp/res/smi.txt 2>/dev/null
logs=$(cd / && ls -d tmp/itd-farm/*.log tmp/itd-farm/*.json tmp/itd-farm/*.yaml tmp/itd-farm/*/manifest.json \
       tmp/itd-e2e/*.log tmp/itd-e2e/*.json 2>/dev/null)
tar -czf "$OUT/res.tgz" -C / tmp/res $logs 2>/dev/null
P
t0=$SECONDS
[ -f .carry/site.tar.xz ] && tar -xJf .carry/site.tar.xz -C /tmp/site && echo "unpacked in $((SECONDS - t0)) s"
export PYTHONPATH=$PWD:/tmp/site  # $PWD: Ray's workers import infinitetalk_dist from the checkout
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
if [ ! -f /tmp/itd-weights.complete ]; then
  t0=$SECONDS
  python benchmarks/make_weights.py /tmp/itd-weights > /tmp/res/make_weights.log 2>&1 &&
    touch /tmp/itd-weights.complete
  echo "make_weights rc $? in $((SECONDS - t0)) s"; tail -12 /tmp/res/make_weights.log
fi
t0=$SECONDS
"$@" > /tmp/res/command.out 2>&1
echo "command rc $? in $((SECONDS - t0)) s: $*"
cat /tmp/res/command.out
touch /tmp/bg.done
