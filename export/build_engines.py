"""Build zsad-edge engine bundles: `python export/build_engines.py [COMMAND] ...` (commands: export/cli/).

python export/build_engines.py --method sdp --out bundles/weld_sdp          # build (the default command)
python export/build_engines.py demo                                         # offline demo, no downloads
python export/build_engines.py add-precision bundles/weld --precision int8 --calibration-images normal/
python export/build_engines.py engines bundles/weld --precision fp16 int8   # TensorRT, on the GPU machine
python export/build_engines.py train-heads --method sdpplus --dataset /data/visa --out sdpplus_visa.pth
"""

import sys

from zsad_edge.export.cli import main

if __name__ == "__main__":
    sys.exit(main())
