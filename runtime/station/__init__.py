"""A camera station: frames from live and recorded sources in, a verdict per frame out (`zsad-edge watch`).

sources.py: one FrameSource per camera, stream, video file or drop folder, each with its own
capture thread and bounded queue (live sources drop their oldest frames when inference falls
behind, files and folders wait); batching.py: batches across sources; station.py: the Station
(prepare, infer and finish threads) and the watch() generator; events.py: the frame event and
the JSON-lines log; stats.py: counts and latency windows; sinks.py, messaging.py: frame images,
video, MQTT, webhook; metrics.py, status.py: Prometheus, /healthz and the status line.
"""
