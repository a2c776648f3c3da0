"""vrpsr_plugin: recompression-aware perceptual super-resolution as a BasicSR plugin. Install with
``bash scripts/install.sh`` (it installs torch/torchvision/basicsr the way this machine needs first)."""
from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
requirements = [line.strip() for line in (here / 'requirements.txt').read_text().splitlines()
                if line.strip() and not line.startswith('#')]

setup(
    name='vrpsr_plugin',
    version='0.1.0',
    description='Versatile recompression-aware perceptual image super-resolution (VRPSR) for BasicSR and ComfyUI',
    long_description=(here / 'README.md').read_text(encoding='utf-8'),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.10',
    packages=find_packages(include=['vrpsr_plugin', 'vrpsr_plugin.*']),
    # the shipped ASSR-EIC decoder and the parameter-set dictionaries of its file format (docs/eic.md)
    package_data={'vrpsr_plugin.eic': ['weights/*.safetensors', 'dictionaries/*.bin']},
    install_requires=['torch>=2.1', 'basicsr>=1.4.2,<1.5'] + requirements,
    extras_require={'dev': ['pytest>=7', 'pytest-timeout>=2', 'psutil>=5'],
                    'cluster': ['ray>=2.9']},  # --engine ray (docs/cluster.md)
    entry_points={'console_scripts': ['vrpsr=vrpsr_plugin.cli:main']},
)
