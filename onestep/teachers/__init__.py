"""Layer 4: frozen teachers behind one protocol (``base.Teacher``): the analytic mixture and
diffusers pipelines. Nothing outside ``teachers/`` and ``nets/`` knows which kind it holds."""
