"""Convolutional front end of the Zipformer: 100 Hz fbank in, 50 Hz embeddings out.

Layout and parameter names match ZIPA checkpoints (``encoder_embed.conv.{0,4,7}``,
``encoder_embed.convnext.*``, ``encoder_embed.out``, ``encoder_embed.out_norm``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .scaling import (
    Balancer,
    BiasNorm,
    Dropout3,
    FloatLike,
    ScaleGrad,
    ScheduledFloat,
    SwooshL,
    SwooshR,
    Whiten,
    is_exporting,
    scaled_conv2d,
)

__all__ = ["Conv2dSubsampling", "ConvNeXt", "encoder_output_frames"]


def encoder_output_frames(num_fbank_frames, output_downsampling_factor: int = 1):
    """Zipformer output frames for ``num_fbank_frames`` input frames (an int or an int tensor).

    Conv2dSubsampling gives ``(T - 7) // 2`` frames (50 Hz); the encoder then downsamples by
    ``output_downsampling_factor`` rounding up: 1 for CR-CTC, 2 for the transducer (``((T - 7) // 2 + 1) // 2``).
    Never below 0 for ints.
    """
    out = (num_fbank_frames - 7) // 2
    f = output_downsampling_factor
    if f != 1:
        out = (out + f - 1) // f
    return max(0, out) if isinstance(out, int) else out


class _DepthwiseConv2dTrainCpu(torch.autograd.Function):
    """A stride-1 depthwise Conv2d for training on CPU, in channels-last layout, in fp32 or bf16 autocast.

    oneDNN computes the forward and the input gradient fast, but its depthwise weight gradient took 12x the
    forward (about 8% of a tiny-model step). Here the weight gradient is one grouped convolution: per (channel,
    utterance) pair the padded input is correlated with the output gradient as the kernel, giving a kh x kw map,
    summed over utterances (3x faster). The input gradient is the forward convolution of the output gradient
    with the flipped kernel. Under bf16 autocast the forward and the input gradient run in x_cl's dtype (bf16)
    as autocast's convolution would; the weight gradient, a sum over every frame, is computed in fp32 (in a
    check on a (7, 64, 300, 19) input, 3.8x closer to an fp64 reference than oneDNN's bf16 weight gradient).
    """

    @staticmethod
    def forward(ctx, x: Tensor, x_cl: Tensor, weight: Tensor, bias: Tensor | None, padding: tuple[int, int]):
        # x: (N, C, T, F) contiguous, saved for the weight gradient; x_cl: the same values channels-last, in the
        # dtype to compute in (the parameters are cast to it, as autocast does)
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        ctx.has_bias = bias is not None
        dt = x_cl.dtype
        with torch.autocast("cpu", enabled=False):
            return torch.nn.functional.conv2d(x_cl, weight.to(dt), None if bias is None else bias.to(dt),
                                              padding=padding, groups=x.shape[1])

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        n, c, t, f = x.shape
        kh, kw = weight.shape[2:]
        ph, pw = ctx.padding
        grad_cl = grad.contiguous(memory_format=torch.channels_last)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[1]:
            grad_x = torch.nn.functional.conv2d(grad_cl, weight.to(grad.dtype).flip(2, 3),
                                                padding=(kh - 1 - ph, kw - 1 - pw), groups=c)
        if ctx.needs_input_grad[2]:
            # (1, C*N, T + 2ph, F + 2pw) correlated with (C*N, 1, T, F), one group per (channel, utterance);
            # float() is a no-op in fp32 training
            inp = torch.nn.functional.pad(x.float(), (pw, pw, ph, ph)).transpose(0, 1).reshape(
                1, c * n, t + 2 * ph, f + 2 * pw)
            ker = grad.float().contiguous().transpose(0, 1).reshape(c * n, 1, t, f)
            maps = torch.nn.functional.conv2d(inp, ker, groups=c * n)
            grad_w = maps.view(c, n, kh, kw).sum(1).unsqueeze(1).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[3]:
            grad_b = grad.float().sum((0, 2, 3)).to(weight.dtype)
        return None, grad_x, grad_w, grad_b, None


class ConvNeXt(nn.Module):
    """Residual ConvNeXt block on (N, C, T, F): depthwise 7x7, 1x1 up (x3), SwooshL, 1x1 down.

    In training the residual branch is dropped for whole utterances with a scheduled rate.
    """

    channels_last_on_cpu = True
    # CPU training (fp32, or bf16 autocast) takes the depthwise convolution's gradients from
    # _DepthwiseConv2dTrainCpu instead of oneDNN's (benchmarks/train_compile.py --depthwise compares the two)
    fast_depthwise_grad = True

    def __init__(
        self,
        channels: int,
        hidden_ratio: int = 3,
        kernel_size: tuple[int, int] = (7, 7),
        layerdrop_rate: FloatLike | None = None,
    ) -> None:
        super().__init__()
        self.padding = ((kernel_size[0] - 1) // 2, (kernel_size[1] - 1) // 2)
        hidden = channels * hidden_ratio
        # per-utterance skipping of the whole block, strong early in training
        self.layerdrop_rate = (
            layerdrop_rate if layerdrop_rate is not None else ScheduledFloat((0.0, 0.2), (20000.0, 0.015))
        )
        self.depthwise_conv = nn.Conv2d(
            channels, channels, kernel_size=kernel_size, groups=channels, padding=self.padding
        )
        self.pointwise_conv1 = nn.Conv2d(channels, hidden, kernel_size=1)
        # keeps hidden activations from dying or exploding (gradient-only)
        self.hidden_balancer = Balancer(
            hidden, channel_dim=1, min_positive=0.3, max_positive=1.0, min_abs=0.75, max_abs=5.0
        )
        self.activation = SwooshL()
        self.pointwise_conv2 = scaled_conv2d(hidden, channels, kernel_size=1, initial_scale=0.01)
        # keeps the block output centred and of moderate size (gradient-only)
        self.out_balancer = Balancer(
            channels, channel_dim=1, min_positive=0.4, max_positive=0.6, min_abs=1.0, max_abs=6.0
        )
        # decorrelates output channels (gradient-only)
        self.out_whiten = Whiten(num_groups=1, whitening_limit=5.0, prob=(0.025, 0.25), grad_scale=0.01)

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, C, T, F) -> (N, C, T, F)."""
        fast_cpu_training = (self.channels_last_on_cpu and x.device.type == "cpu" and self.training
                             and not is_exporting())
        own_grad = False
        if fast_cpu_training:
            # oneDNN's depthwise 7x7 convolution trains ~2.5x faster in channels-last layout on CPU
            x_nchw, x = x, x.contiguous(memory_format=torch.channels_last)
            # the dtype the convolution computes in: autocast's (bf16 only here) or fp32 without it
            autocast = torch.is_autocast_enabled("cpu")
            compute_dtype = torch.get_autocast_dtype("cpu") if autocast else x.dtype
            own_grad = (self.fast_depthwise_grad and torch.is_grad_enabled() and x_nchw.is_contiguous()
                        and compute_dtype == (torch.bfloat16 if autocast else torch.float32))
        if own_grad:
            conv = self.depthwise_conv
            y = _DepthwiseConv2dTrainCpu.apply(x_nchw, x.to(compute_dtype), conv.weight, conv.bias, self.padding)
        else:
            y = self.depthwise_conv(x)
        y = self.pointwise_conv1(y)
        y = self.hidden_balancer(y)
        y = self.activation(y)
        y = self.pointwise_conv2(y)
        if self.training:
            rate = float(self.layerdrop_rate)
            if rate != 0.0:
                keep = torch.rand((x.shape[0], 1, 1, 1), device=x.device) > rate
                y = y * keep.to(y.dtype)
        x = x + y
        if self.training:
            x = self.out_balancer(x)
            x = self.out_whiten(x.transpose(1, 3)).transpose(1, 3)
        return x


class Conv2dSubsampling(nn.Module):
    """(N, T, idim) fbank -> (N, (T - 7) // 2, odim) embeddings.

    Three 3x3 convolutions (the second strides 2 in time and frequency, the third 2 in frequency),
    a ConvNeXt block, a linear projection of the flattened (channels x freq) map, then BiasNorm.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        layer1_channels: int = 8,
        layer2_channels: int = 32,
        layer3_channels: int = 128,
        dropout: FloatLike = 0.1,
    ) -> None:
        if in_channels < 7:
            raise ValueError(f"Conv2dSubsampling: in_channels={in_channels}, expected >= 7")
        super().__init__()
        # Indices 0, 4 and 7 hold the convolutions (checkpoint names); the others hold no parameters.
        self.conv = nn.Sequential(
            nn.Conv2d(1, layer1_channels, kernel_size=3, padding=(0, 1)),
            # keeps first-layer gradients inside fp16 range under AMP
            ScaleGrad(0.2),
            Balancer(layer1_channels, channel_dim=1, max_abs=1.0),
            SwooshR(),
            nn.Conv2d(layer1_channels, layer2_channels, kernel_size=3, stride=2),
            Balancer(layer2_channels, channel_dim=1, max_abs=4.0),
            SwooshR(),
            nn.Conv2d(layer2_channels, layer3_channels, kernel_size=3, stride=(1, 2)),
            Balancer(layer3_channels, channel_dim=1, max_abs=4.0),
            SwooshR(),
        )
        self.convnext = ConvNeXt(layer3_channels, kernel_size=(7, 7))
        self.out_width = (((in_channels - 1) // 2) - 1) // 2
        self.layer3_channels = layer3_channels
        self.out = nn.Linear(self.out_width * layer3_channels, out_channels)
        # decorrelates the embedding channels (gradient-only)
        self.out_whiten = Whiten(
            num_groups=1,
            whitening_limit=ScheduledFloat((0.0, 4.0), (20000.0, 8.0), default=4.0),
            prob=(0.025, 0.25),
            grad_scale=0.02,
        )
        self.out_norm = BiasNorm(out_channels)
        # dropout with a mask shared over time
        self.dropout = Dropout3(dropout, shared_dim=1)

    def forward(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
        """x: (N, T, idim) zero-padded, x_lens: (N,) -> ((N, T', odim), (N,)) with T' = (T - 7) // 2.

        Raises ValueError if the padded length T is not max(x_lens) (ZIPA asserts the same).
        """
        x = self.conv(x.unsqueeze(1))  # (N, C, T'', F')
        x = self.convnext(x)
        n, c, t, f = x.shape
        x = x.transpose(1, 2).reshape(n, t, c * f)
        x = self.out(x)
        x = self.out_whiten(x)
        x = self.out_norm(x)
        x = self.dropout(x)
        x_lens = encoder_output_frames(x_lens)
        if not is_exporting() and x.shape[1] != int(x_lens.max()):
            raise ValueError(
                f"Conv2dSubsampling: output has {x.shape[1]} frames but max(x_lens) gives {int(x_lens.max())}; "
                "the padded input length must equal max(x_lens)"
            )
        return x, x_lens
