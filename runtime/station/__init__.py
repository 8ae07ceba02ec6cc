"""A camera station: frames from live and recorded sources in, a verdict per frame out (`zsad-edge watch`).

sources.py: one FrameSource per camera, stream, video file or drop folder, each with its own
capture thread and bounded queue (live sources drop their oldest frames when inference falls
behind, files and folders wait); loop.py: batches frames across sources and runs the detector;
events.py: the JSON-lines event log and the run summary.
"""
