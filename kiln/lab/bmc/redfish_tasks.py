"""Redfish Tasks for a lab BMC: long operations that run on after their request returns.

sushy-tools serves one fixed task (`/redfish/v1/TaskService/Tasks/42`, always Completed), so
its SimpleUpdate can only pretend. A lab BMC runs real work (fetch, verify, stage an image),
so it keeps real Task resources: each runs in a thread, moves New → Running →
Completed | Exception, and carries Redfish messages (Update registry ids) saying what happened.

The Task's own URI is also its task monitor, as on Dell iDRAC and what the sushy client
polls: a GET answers 202 Accepted while the task runs and 200 OK once it has ended.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

TASKS_PATH = "/redfish/v1/TaskService/Tasks"
ENDED = ("Completed", "Exception", "Killed", "Cancelled")


def message(message_id: str, text: str, args: list[str], severity: str = "OK") -> dict[str, Any]:
    """A Redfish Message (Message.v1_1); `message_id` names a DMTF registry entry."""
    return {"MessageId": message_id, "Message": text, "MessageArgs": args,
            "MessageSeverity": severity, "Severity": severity}


class TaskFailed(Exception):
    """Ends a task in Exception, with this message."""

    def __init__(self, failure: dict[str, Any]) -> None:
        super().__init__(failure["Message"])
        self.failure = failure


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class Task:
    id: str
    name: str
    state: str = "New"
    status: str = "OK"
    percent: int = 0
    start_time: str = field(default_factory=_now)
    end_time: str | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def uri(self) -> str:
        return f"{TASKS_PATH}/{self.id}"

    @property
    def ended(self) -> bool:
        return self.state in ENDED

    def resource(self) -> dict[str, Any]:
        document = {
            "@odata.type": "#Task.v1_7_3.Task",
            "@odata.id": self.uri,
            "Id": self.id,
            "Name": self.name,
            "TaskState": self.state,
            "TaskStatus": self.status,
            "PercentComplete": self.percent,
            "StartTime": self.start_time,
            "TaskMonitor": self.uri,
            "Messages": list(self.messages),
        }
        if self.end_time is not None:
            document["EndTime"] = self.end_time
        return document


Progress = Callable[[int, dict[str, Any] | None], None]
# A job reports progress and returns the messages of its success, or raises TaskFailed.
Job = Callable[[Progress], list[dict[str, Any]]]


class TaskList:
    """The tasks of one BMC, in memory (a BMC restart forgets them, as real ones do)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tasks: dict[str, Task] = {}
        self._next = 1

    def run(self, name: str, job: Job) -> Task:
        with self._lock:
            task = Task(id=str(self._next), name=name)
            self._next += 1
            self._tasks[task.id] = task
        threading.Thread(target=self._work, args=(task, job), name=f"task-{task.id}",
                         daemon=True).start()
        return task

    def _work(self, task: Task, job: Job) -> None:
        def progress(percent: int, note: dict[str, Any] | None = None) -> None:
            with self._lock:
                task.state, task.percent = "Running", percent
                if note is not None:
                    task.messages.append(note)

        try:
            final = job(progress)
        except TaskFailed as exc:
            self._end(task, "Exception", "Critical", [exc.failure])
        except Exception as exc:  # a bug or an unforeseen failure: the task says so
            self._end(task, "Exception", "Critical", [message(
                "Base.1.0.InternalError", f"internal error: {type(exc).__name__}: {exc}", [],
                "Critical")])
        else:
            self._end(task, "Completed", "OK", final, percent=100)

    def _end(self, task: Task, state: str, status: str, notes: list[dict[str, Any]],
             percent: int | None = None) -> None:
        with self._lock:
            task.state, task.status = state, status
            task.messages.extend(notes)
            if percent is not None:
                task.percent = percent
            task.end_time = _now()

    def get(self, task_id: str) -> Task | None:
        """The task as it is now (a copy: the work thread goes on changing the original)."""
        with self._lock:
            task = self._tasks.get(task_id)
            return None if task is None else replace(task, messages=list(task.messages))

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._tasks)

    def wait(self, task_id: str, timeout: float) -> Task | None:
        """The task once it has ended, or as it is at the timeout."""
        deadline = time.monotonic() + timeout
        task = self.get(task_id)
        while task is not None and not task.ended and time.monotonic() < deadline:
            time.sleep(0.05)
            task = self.get(task_id)
        return task
