"""What a lost job moved, for the daemon to queue it again: the rows deleted from its
source by the commands it served for the job (`archivist.daemon.service.count_deleted`),
not the source's count."""

from __future__ import annotations

import asyncio

from archivist.daemon.service import count_deleted
from archivist.daemon.tracker import TaskRecord, Tracker
from archivist.protocol import JSONObject


def record() -> TaskRecord:
    return TaskRecord(
        collection="chat_messages",
        source_handle="primary",
        dest_handle="archive",
        max_rows=2500,
        batch_size=1000,
        order_by=None,
        task_id="chat_messages-t1-1",
    )


def served(
    job: TaskRecord, target: str, params: JSONObject, answer: JSONObject | BaseException
) -> None:
    async def go() -> None:
        future: asyncio.Future[JSONObject] = asyncio.get_running_loop().create_future()
        job.serving.add(future)
        if isinstance(answer, BaseException):
            future.set_exception(answer)
        else:
            future.set_result(answer)
        count_deleted(job, target, params, future)
        assert future not in job.serving

    asyncio.run(go())


def test_only_the_jobs_own_deletes_on_its_source_count() -> None:
    job = record()
    source = {"collection": "chat_messages", "dbHandle": "primary"}
    served(job, "data/copy", {**source, "destHandle": "archive"}, {"copied": 1000, "deleted": 1000})
    served(job, "data/delete", {**source, "ids": [1]}, {"deleted": 990, "skipped": [1]})
    served(job, "data/relay", {**source, "ids": [2]}, {"copied": 1, "deleted": 1})
    # Not the job's rows: a child's delete, the archive's, a copy that deletes nothing, a
    # listing, a command that failed.
    served(job, "data/delete", {"collection": "attachments", "dbHandle": "primary"}, {"deleted": 7})
    served(
        job, "data/delete", {"collection": "chat_messages", "dbHandle": "archive"}, {"deleted": 5}
    )
    served(job, "data/copy", {**source, "destHandle": "archive"}, {"copied": 1000})
    served(job, "data/list", source, {"items": [], "count": 0, "deleted": 3})
    served(job, "data/delete", source, RuntimeError("db_error"))
    assert job.deleted == 1991

    Tracker().recount(job)
    assert (job.archived, job.carried, job.remaining) == (1991, 1991, 509)


def test_a_job_never_counts_more_than_it_was_asked_to_move() -> None:
    job = record()
    job.deleted = 2600  # a design-only worker's last batch went past the job's rows
    Tracker().recount(job)
    assert (job.archived, job.remaining) == (2500, 0)
