"""OneStepScheduler: the noise level and parameterisation of a one-step generator, as a diffusers
scheduler component (so ``OneStepPipeline(**pipe.components)`` rebuilds the same pipeline).

One step: ``x = init_noise_sigma * z`` at ``sigma_init``; the network sees ``network_input(x)`` at
``timestep_init`` and ``step`` turns its output into the sample ``x0_hat`` (the EDM denoiser form).
Imports only torch and diffusers, plus ``edm_form`` next to it (both are copied into every export).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput

from .edm_form import denoised_from_output, network_input


@dataclass
class OneStepSchedulerOutput(BaseOutput):
    prev_sample: torch.Tensor  # the generated sample x0_hat
    pred_original_sample: torch.Tensor


class OneStepScheduler(SchedulerMixin, ConfigMixin):
    """A one-step sampler: from unit noise scaled to ``sigma_init`` straight to the sample.

    ``parameterization``: ``vp`` | ``edm`` | ``flow``; ``prediction_type``: the network's output
    (``epsilon`` | ``v_prediction`` | ``sample`` | ``flow``); ``timestep_init``: the network's time
    input at ``sigma_init``; ``sigma_data``: EDM's data scale; ``sample_size``: the latent side for
    a network whose config has none (Flux); ``guidance``: the value of a guidance-distilled
    network's guidance input (Flux-dev), the teacher's, fixed.
    """

    config_name = "scheduler_config.json"
    order = 1

    @register_to_config
    def __init__(self, sigma_init: float = 2.5, timestep_init: float = 0.0, parameterization: str = "vp",
                 prediction_type: str = "epsilon", sigma_data: float = 0.5, sample_size: int | None = None,
                 guidance: float | None = None):
        self.timesteps = torch.tensor([float(timestep_init)])
        self.num_inference_steps = 1

    @property
    def init_noise_sigma(self) -> float:
        return float(self.config.sigma_init)

    def set_timesteps(self, num_inference_steps: int = 1, device=None) -> None:
        if num_inference_steps != 1:
            raise ValueError(f"a one-step generator takes num_inference_steps=1, got {num_inference_steps}")
        self.timesteps = torch.tensor([float(self.config.timestep_init)], device=device)

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """The network's input for the EDM-form sample ``x = sigma_init z``."""
        sigma = torch.full((sample.shape[0],), float(self.config.sigma_init), device=sample.device)
        return network_input(sample.float(), sigma, self.config.parameterization, self.config.sigma_data)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
             return_dict: bool = True) -> OneStepSchedulerOutput | tuple:
        """The sample ``x0_hat`` from the network's output at ``sample``."""
        sigma = torch.full((sample.shape[0],), float(self.config.sigma_init), device=sample.device)
        x0 = denoised_from_output(sample.float(), sigma, model_output.float(), self.config.parameterization,
                                  self.config.prediction_type, self.config.sigma_data)
        return OneStepSchedulerOutput(prev_sample=x0, pred_original_sample=x0) if return_dict else (x0,)

    def __len__(self) -> int:
        return 1
