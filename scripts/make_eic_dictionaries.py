"""Write the parameter-set dictionaries of the ASSR-EIC file format (vrpsr_plugin/eic/dictionaries/CODEC.bin).

A dictionary is the parameter sets (everything before the first slice) of flat grey pictures coded at a grid of
sizes and QPs, concatenated: the parameter sets of a real picture differ from them in a few size- and QP-dependent
fields, so deflate against the dictionary stores them in 10-30 bytes instead of 40-200. The dictionaries are part of
format version 2 (a file decodes only with the dictionary it was written with): never regenerate the shipped ones;
a new set needs a new format version.

    python scripts/make_eic_dictionaries.py OUT_DIR
"""
import sys
from pathlib import Path

import numpy as np

SIZES = ((64, 64), (64, 32), (128, 128), (32, 32), (256, 256), (128, 64), (200, 100), (48, 48), (512, 512), (96, 64),
         (40, 40), (80, 80), (160, 120), (33, 47), (300, 200), (1024, 768))
QPS = (22, 30, 38, 45, 51)


def main() -> int:
    from vrpsr_plugin.codecs import encode
    from vrpsr_plugin.eic.container import DICTIONARY_CODECS, split_parameter_sets
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for codec in DICTIONARY_CODECS:
        parts = [split_parameter_sets(encode(np.full((h, w, 3), 128, np.uint8), codec, qp=qp).bitstream, codec)[0]
                 for w, h in SIZES for qp in QPS]
        (out / f'{codec}.bin').write_bytes(b''.join(reversed(parts)))
        print(codec, sum(map(len, parts)), 'bytes')
    return 0


if __name__ == '__main__':
    sys.exit(main())
