"""ASSR-EIC (seed 002): extreme image compression by arbitrary-scale down-sampling, a real codec and one rate- and
scale-adaptive SR decoder; see docs/eic.md. ``container`` is the file format, ``rescale`` the encoder-side
down-sampler, ``pipeline`` encode/decode with rate control, ``cli`` the ``vrpsr eic`` command."""
