"""Dynamics 365 as the runner's CRM: who a record is on the platform, one timeline record per job, and the
record itself for the actions of triggers: fields set with a PATCH of the record (`If-Match: *`, so a deleted
record is a 404 and never a new row), and tasks regarding the record for its owner (`ownerid`, read from the
record), one per job: the job's mark `(job <id>)` ends the description and is looked for before creating.

The timeline record is a `post` (an auto post of type status, shown on the record's timeline where a Dynamics 365
app is installed) or an `annotation` (a note, available on any Dataverse environment), chosen by configuration.

**One record per job.** Posts are immutable and neither kind has a column of ours to hold a job id, so the job
id goes into the text itself as `(job <id>)` (the executor's default template already ends that way; other
templates get it appended), and the note subject is `<subject> (job <id>)`. Before creating, `post` looks for
an existing record of this job on the same CRM record: an exact `eq` on the note subject, `contains` on the
post text (a post has no other column to match). The parentheses keep job `1` from matching job `12`. This
costs one query per post, and it is what makes a retried post safe after a lost answer: the first try may have
been written even though we never heard back. (A deterministic primary key would save the query, but whether
Dataverse lets a client choose the id of a post, and with which error a duplicate is refused, is not
documented well enough to rely on.)
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any, Literal

from connector import errors
from connector.crm import Task, TimelinePost
from connector.dataverse.batch import BatchPart, BatchResult
from connector.dataverse.changesets import shared_writes
from connector.dataverse.client import DataverseClient, guid, odata_literal, row_url
from connector.platform import Contact

log = logging.getLogger(__name__)

# kind -> (entity set, primary key)
RECORDS = {
    "contact": ("contacts", "contactid"),
    "lead": ("leads", "leadid"),
    "account": ("accounts", "accountid"),
}
POST_SOURCE_AUTO = 1
POST_TYPE_STATUS = 7
POST_MAX_LENGTH = 2000
_JOB_MARK = re.compile(r"\(job ([^()\s]+)\)")


class _Create:
    """A new row as a write that may share a `$batch` (`changesets.Writes`)."""

    def __init__(self, client: DataverseClient, entity_set: str, row: dict[str, Any]) -> None:
        self.client = client
        self.entity_set = entity_set
        self.row = row
        self.parts = (BatchPart("POST", entity_set, body=row),)

    def alone(self) -> None:
        self.client.create(self.entity_set, self.row)

    def answer(self, results: list[BatchResult]) -> None:
        if not results[0].ok:
            raise self.client.batch_error(results[0])


def job_mark(job_id: str) -> str:
    return f"(job {job_id})"


class DataverseCrm:
    """The `Crm` on Dataverse. `identify_column` empty: the platform knows a record by its CRM id."""

    name = "dataverse"

    def __init__(
        self,
        client: DataverseClient,
        *,
        timeline: Literal["post", "annotation"] = "post",
        note_subject: str = "Marketing platform",
        identify_column: str = "",
        identify_as: Literal["external_id", "email"] = "external_id",
    ) -> None:
        if timeline not in ("post", "annotation"):
            raise ValueError(f"timeline must be 'post' or 'annotation', not {timeline!r}")
        self.client = client
        self.timeline_kind = timeline
        self.note_subject = note_subject
        self.identify_column = identify_column
        self.identify_as = identify_as

    # -- identify ------------------------------------------------------------------------------------------

    def identify(self, target_kind: str, target_id: str) -> Contact:
        entity_set, _ = _record(target_kind)
        if not self.identify_column:
            # The CRM id is the platform's external id: no request needed, the platform says if it is unknown.
            return Contact(external_id=target_id)
        try:
            row = self.client.get(entity_set, target_id, select=[self.identify_column])
        except errors.InvalidInput as exc:
            raise errors.InvalidInput(
                f"The {target_kind} id {target_id!r} is not a Dataverse row id; give the record's GUID."
            ) from exc
        value = row.get(self.identify_column)
        if value in (None, ""):
            raise errors.NotFound(
                f"The {target_kind} {target_id} has no {self.identify_column}, which the platform needs to find it."
            )
        if self.identify_as == "email":
            return Contact(email=str(value))
        return Contact(external_id=str(value))

    # -- the timeline --------------------------------------------------------------------------------------

    def post(self, *, target_kind: str, target_id: str, job_id: str, text: str, may_exist: bool = True) -> None:
        entity_set, _ = _record(target_kind)
        record = row_url(entity_set, target_id)
        # The look costs a request per job; on a job's first try at posting there is nothing to find.
        if may_exist and self._existing(target_kind, target_id, job_id):
            log.info("job %s: the timeline record exists already; not writing another", job_id)
            return
        mark = job_mark(job_id)
        if self.timeline_kind == "post":
            if mark not in text:
                text = f"{text} {mark}"
            if len(text) > POST_MAX_LENGTH:
                text = text[: POST_MAX_LENGTH - len(mark) - 2] + "… " + mark
            row: dict[str, Any] = {
                "text": text,
                "source": POST_SOURCE_AUTO,
                "type": POST_TYPE_STATUS,
                f"regardingobjectid_{target_kind}@odata.bind": record,
            }
            self._create("posts", row)
        else:
            self._create("annotations", {
                "subject": f"{self.note_subject} {mark}",
                "notetext": text,
                f"objectid_{target_kind}@odata.bind": record,
            })
        log.info("job %s: wrote a timeline %s on %s %s", job_id, self.timeline_kind, target_kind, target_id)

    def _create(self, entity_set: str, row: dict[str, Any]) -> None:
        # Posts leave in the `$batch` of whatever else is being written at the moment (the job store's writes,
        # when the jobs are Dataverse rows too), in a change set of their own.
        shared_writes(self.client)(_Create(self.client, entity_set, row))

    def _existing(self, target_kind: str, target_id: str, job_id: str) -> bool:
        record = _guid(target_kind, target_id)
        mark = job_mark(job_id)
        if self.timeline_kind == "post":
            query = f"_regardingobjectid_value eq {record} and contains(text, {odata_literal(mark)})"
            found = self.client.query("posts", select=["postid"], filter=query, top=1)
        else:
            subject = odata_literal(f"{self.note_subject} {mark}")
            query = f"_objectid_value eq {record} and subject eq {subject}"
            found = self.client.query("annotations", select=["annotationid"], filter=query, top=1)
        return any(True for _ in found)

    def timeline(self, target_kind: str, target_id: str) -> list[TimelinePost]:
        record = _guid(target_kind, target_id)
        posts: list[TimelinePost] = []
        if self.timeline_kind == "post":
            query = (f"_regardingobjectid_value eq {record} and source eq {POST_SOURCE_AUTO} "
                     f"and contains(text, '(job ')")
            rows = self.client.query("posts", select=["text", "createdon"], filter=query, orderby="createdon asc")
            for row in rows:
                text = str(row.get("text") or "")
                marks = _JOB_MARK.findall(text)
                if marks:
                    posts.append(TimelinePost(target_kind, target_id, marks[-1], text, str(row.get("createdon"))))
        else:
            prefix = odata_literal(f"{self.note_subject} (job ")
            query = f"_objectid_value eq {record} and startswith(subject, {prefix})"
            rows = self.client.query("annotations", select=["subject", "notetext", "createdon"], filter=query,
                                     orderby="createdon asc")
            for row in rows:
                marks = _JOB_MARK.findall(str(row.get("subject") or ""))
                if marks:
                    posts.append(TimelinePost(target_kind, target_id, marks[-1], str(row.get("notetext") or ""),
                                              str(row.get("createdon"))))
        return posts


    # -- the record -----------------------------------------------------------------------------------------

    def update_record(self, target_kind: str, target_id: str, fields: Mapping[str, Any], *, ref: str) -> None:
        entity_set, _ = _record(target_kind)
        self.client.update(entity_set, _guid(target_kind, target_id), dict(fields), etag="*")
        log.info("job %s: set %s on %s %s", ref, ", ".join(fields), target_kind, target_id)

    def fields(self, target_kind: str, target_id: str, names: list[str]) -> dict[str, Any]:
        entity_set, _ = _record(target_kind)
        row = self.client.get(entity_set, _guid(target_kind, target_id), select=names)
        return {name: row.get(name) for name in names}

    def create_task(self, target_kind: str, target_id: str, *, subject: str, description: str, due: str,
                    ref: str) -> None:
        entity_set, _ = _record(target_kind)
        record = _guid(target_kind, target_id)
        mark = job_mark(ref)
        found = self.client.query("tasks", select=["activityid"], top=1,
                                  filter=f"_regardingobjectid_value eq {record} and "
                                         f"contains(description, {odata_literal(mark)})")
        if any(True for _ in found):
            log.info("job %s: the task exists already; not creating another", ref)
            return
        owner = self.client.get(entity_set, record, select=["_ownerid_value"]).get("_ownerid_value")
        row: dict[str, Any] = {
            "subject": subject, "description": f"{description} {mark}".strip(), "scheduledend": due,
            f"regardingobjectid_{target_kind}_task@odata.bind": row_url(entity_set, record),
        }
        if owner:
            row["ownerid@odata.bind"] = row_url("systemusers", str(owner))
        self.client.create("tasks", row)
        log.info("job %s: created a task on %s %s", ref, target_kind, target_id)

    def tasks(self, target_kind: str, target_id: str) -> list[Task]:
        record = _guid(target_kind, target_id)
        rows = self.client.query("tasks", select=["subject", "description", "scheduledend", "_ownerid_value"],
                                 filter=f"_regardingobjectid_value eq {record} and contains(description, '(job ')",
                                 orderby="createdon asc")
        tasks = []
        for row in rows:
            marks = _JOB_MARK.findall(str(row.get("description") or ""))
            if marks:
                tasks.append(Task(target_kind=target_kind, target_id=target_id, job_id=marks[-1],
                                  subject=str(row.get("subject") or ""), description=str(row.get("description")),
                                  due=str(row.get("scheduledend") or ""), owner=row.get("_ownerid_value")))
        return tasks


def _record(target_kind: str) -> tuple[str, str]:
    try:
        return RECORDS[target_kind]
    except KeyError:
        raise errors.InvalidInput(f"Record type is {target_kind!r}; it must be contact, lead or account.") from None


def _guid(target_kind: str, target_id: str) -> str:
    try:
        return guid(target_id)
    except errors.InvalidInput:
        raise errors.InvalidInput(
            f"The {target_kind} id {target_id!r} is not a Dataverse row id; give the record's GUID."
        ) from None
