"""A camera station: frames from live and recorded sources in, a verdict per frame out (`zsad-edge watch`).

sources.py: the FrameSource base (capture thread, bounded queue, exact counts), video files and
cameras/streams; drop_folder.py and ledger.py: drop folders, each complete file scored exactly
once; opening.py: `[name=]URI` to a source; credentials.py: credentials from the environment or
files, masked everywhere; source_rules.py: regions of interest and per-source thresholds;
batching.py: batches across sources; station.py: the Station (prepare, infer and finish threads)
and the watch() generator; events.py: the frame event and the JSON-lines log (full disk, torn
lines, rotation); stats.py: counts and latency windows; sinks.py: the sink base, frame images and
video segments; messaging.py and spool.py: MQTT and webhook, stored and forwarded; plc.py: OPC UA
and Modbus TCP; store.py: the SQLite stores; retention.py; config.py: the TOML station file;
systemd.py: notify and watchdog; metrics.py, status.py: Prometheus, /healthz and the status line;
ui/: the operator page (`--ui`): its live view (a sink), web application, token gate and server.
"""
