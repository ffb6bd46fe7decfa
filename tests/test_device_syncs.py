"""The counter of host syncs and host-to-device bytes (`repro.util.device_syncs`) on small programs."""

from __future__ import annotations

import pytest
import torch

from repro.util.device_syncs import DeviceSyncs

DEVICE = torch.device("cpu")


def _step(lin, opt, x):
    loss = lin(x).square().mean()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(lin.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss


def test_uploads_are_counted_in_bytes_and_what_is_computed_from_them_is_on_the_device():
    with DeviceSyncs() as c:
        host = torch.arange(12, dtype=torch.float32).reshape(3, 4)
        dev = host.to(DEVICE)
        assert c.h2d_bytes == 48 and c.uploads == 1
        assert c.is_marked(dev) and not c.is_marked(host)  # the device copy is another tensor
        y = (dev * 2).sum(0)
        z = torch.zeros(4, device=DEVICE)  # filled on the device: no bytes
        z += y
        assert c.is_marked(y) and c.is_marked(z) and c.h2d_bytes == 48
        float(host.sum())  # the host reading its own tensors is no sync
        assert c.total == 0


@pytest.mark.parametrize("read,name", [
    (lambda t: float(t.sum()), "float"), (lambda t: t.sum().item(), "item"), (lambda t: t.tolist(), "tolist"),
    (lambda t: t.cpu(), "cpu"), (lambda t: t.numpy(), "numpy"), (lambda t: int(t[0]), "int"),
    (lambda t: bool(t.sum() > 0), "bool"), (lambda t: t[t > 0], "index (boolean mask)"),
    (lambda t: t.nonzero(), "nonzero"), (lambda t: torch.masked_select(t, t > 0), "masked_select"),
    (lambda t: torch.unique(t), "_unique2"),
])
def test_each_read_of_a_device_tensor_is_one_sync(read, name):
    with DeviceSyncs() as c:
        t = torch.tensor([1.0, -2.0, 3.0]).to(DEVICE)
        read(t)
    assert dict(c.syncs) == {name: 1}


def test_a_copy_to_the_host_is_a_host_tensor_and_going_back_is_an_upload():
    with DeviceSyncs() as c:
        t = torch.ones(4).to(DEVICE)
        back = t.cpu()
        assert not c.is_marked(back) and c.is_marked(back.to(DEVICE))
    assert dict(c.syncs) == {"cpu": 1} and c.h2d_bytes == 32 and c.uploads == 2


def test_a_host_tensor_in_a_device_operation_is_counted_with_its_bytes():
    with DeviceSyncs() as c:
        t = torch.ones(5).to(DEVICE)
        t + torch.ones(5)  # a host operand of 5 floats
        t + 1.0  # a Python scalar is an argument of the kernel, not a copy
    assert dict(c.syncs) == {"host operand": 1} and c.h2d_bytes == 40


def test_gradients_and_backward_are_followed_and_the_upstream_forward_is_left_out():
    upstream = torch.nn.Linear(3, 4)
    head = torch.nn.Linear(4, 2)

    class Reading(torch.nn.Module):
        def forward(self, x):
            float(x.sum())  # a read inside the excluded module: not counted
            return upstream(x)

    wrapper = Reading()
    with DeviceSyncs() as c:
        c.mark_module(head)
        c.mark_module(upstream)
        c.exclude(wrapper)
        h = wrapper(torch.randn(2, 3).to(DEVICE))
        assert c.is_marked(h)
        head(h).sum().backward()
        assert c.is_marked(head.weight.grad)
        head.weight.grad.tolist()
    assert dict(c.syncs) == {"tolist": 1}


@pytest.mark.parametrize("kind", ["default", "fused"])
def test_a_training_step_of_adam_reads_nothing_from_the_device(kind):
    """Adam's default (single-tensor) step reads its step counter, a host tensor by design; the fused
    implementation (the one a GPU gets) keeps it on the device and reads nothing either."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 3)
    opt = torch.optim.Adam(lin.parameters(), lr=1e-2, **({"fused": True} if kind == "fused" else {}))
    x = torch.randn(6, 4)
    _step(lin, opt, x)
    with DeviceSyncs() as c:
        c.mark_module(lin)
        c.mark_optimizer(opt)
        xd = x.to(DEVICE)
        loss = _step(lin, opt, xd)
        assert c.total == 0 and c.h2d_bytes == x.numel() * 4
        assert c.is_marked(opt.state[lin.weight]["exp_avg"])
        assert c.is_marked(opt.state[lin.weight]["step"]) == (kind == "fused")
        float(loss.detach())
    assert dict(c.syncs) == {"float": 1}


def test_ctc_given_device_lengths_is_a_sync_and_given_host_lengths_is_not():
    logp = torch.randn(6, 2, 4).log_softmax(-1)
    targets = torch.tensor([[1, 2], [3, 0]])
    with DeviceSyncs() as c:
        lp, tg = logp.to(DEVICE), targets.to(DEVICE)
        torch.nn.functional.ctc_loss(lp, tg, [6, 5], [2, 1], reduction="none")
        assert c.total == 0
        torch.nn.functional.ctc_loss(lp, tg, torch.tensor([6, 5]).to(DEVICE), torch.tensor([2, 1]).to(DEVICE))
    assert dict(c.syncs) == {"ctc_loss lengths": 2}
