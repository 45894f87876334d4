"""The shipped prior, chosen in the window like a user would, starts a new fit (inference mode)."""

from __future__ import annotations

import torch

from engine.refine.checkpoint import checkpoint_path
from engine.refine.prior_file import SHIPPED_PRIOR, load_prior
from tests.app.conftest import wait_until


def test_new_fit_starts_from_the_shipped_prior(window, qapp, tiny_project):
    w = window
    c = w.controls
    shipped = load_prior(SHIPPED_PRIOR)  # it ships with the app
    assert w.open_project(tiny_project) and c.state == "idle"
    assert not c.prior_mode.isEnabled()  # no prior chosen: nothing to choose a mode for
    i = c.prior.findData(str(SHIPPED_PRIOR))
    assert c.prior.model().item(i).isEnabled()
    c.prior.setCurrentIndex(i)
    c.prior.activated.emit(i)
    assert c.prior_mode.isEnabled()
    c.prior_mode.setCurrentIndex(c.prior_mode.findData("inference"))
    c.steps.setValue(3)
    c.minutes.setValue(0)
    c.start_button.click()
    assert c.state == "running" and not c.prior.isEnabled()
    wait_until(qapp, lambda: w.refine.runner is None, 240, "the run to finish")
    assert "start from the prior" in w.log_panel.toPlainText()
    ck = torch.load(checkpoint_path(tiny_project), weights_only=True)
    assert ck["step"] == 3 and ck["config"]["freeze_shared"]
    for name, value in shipped.state.items():  # inference: the human fields are the prior's
        assert torch.equal(ck["model"][name], value), name
    # The choice is remembered.
    c.save()
    assert w.settings.get("prior") == str(SHIPPED_PRIOR) and w.settings.get("prior_mode") == "inference"
