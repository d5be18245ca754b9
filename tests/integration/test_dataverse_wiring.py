"""The Dataverse pieces built from settings, as the composition root builds them, in sandbox mode."""

from __future__ import annotations

from pathlib import Path

from config.settings import load_settings
from jobs.dataverse_wiring import (
    dataverse_client,
    dataverse_crm,
    dataverse_store,
    sandbox_ca_file,
    serve_dataverse_sandbox,
)
from jobs.model import JobRequest


def test_sandbox_mode_builds_a_working_store_and_crm_from_settings(tmp_path: Path):
    settings = load_settings(home=tmp_path / "home", job_store="dataverse", crm="dataverse",
                             dataverse={"timeline": "annotation"})
    assert settings.sandbox_mode
    server = serve_dataverse_sandbox(settings)
    try:
        assert server.url.startswith("https://127.0.0.1:")
        assert sandbox_ca_file(settings).is_file()
        client = dataverse_client(settings, sandbox_url=server.url)
        try:
            contact = client.create("contacts", {"lastname": "Smith"})
            store = dataverse_store(settings, client)
            [job] = store.add([JobRequest.from_input(operation="add_tag", tags="Webinar", target_kind="contact",
                                                     target_id=contact)])
            assert store.get(job.id).request == job.request
            crm = dataverse_crm(settings, client)
            crm.post(target_kind="contact", target_id=contact, job_id=job.id, text="Added tag Webinar")
            assert [p.job_id for p in crm.timeline("contact", contact)] == [job.id]
        finally:
            client.close()
    finally:
        server.stop()
