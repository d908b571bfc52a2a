"""An answer's start: what it builds on, its relay, its record, in one place.

    Starter.start(params, owner, ...)   -> Started(relay, recorded, continued_text, trimmed)

A new answer may build on an earlier one: a Continue carries a cut answer on (its
prompt, text and files), a follow-up continues a conversation (its latest turns,
and its files at their latest version; a new attachment of the same name replaces
one). The relay is made (the prompt's limit checked), the client's stream slot
taken (`admit`, the web layer's bound), and the answer's row queued. The route then
starts the relay and renders its events; nothing here reads the request.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from webapp.answers.recording import Recorded
from webapp.answers.store import MAX_TURNS, StoredAnswer
from webapp.errors import BadRequest, Conflict, NotFound
from webapp.relay.attachments import Attachment
from webapp.relay.generation import GenerationService, Relay, Turn
from webapp.relay.schema import GenerateCodeRequest

if TYPE_CHECKING:
    from webapp.answers.life import Answers


@dataclass(frozen=True, slots=True)
class Earlier:
    """What a new answer builds on: the earlier turns of its conversation, and the
    answer it continues (a Continue) or follows (a follow-up's parent)."""

    turns: list[Turn]
    continues: StoredAnswer | None = None
    parent_id: str | None = None
    # The files it carries on from: a Continue's own, a follow-up's parent's latest.
    files: list[Attachment] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Started:
    """A new answer: its relay (not started yet: the route picks when its response may
    begin), its ids when recorded (None with HISTORY=off, or when the store failed),
    the stored text a Continue carries on, and the follow-up turns left out."""

    relay: Relay
    recorded: Recorded | None
    continued_text: str = ""
    trimmed: int = 0


class Starter:
    """Starts answers for `Answers.start`: reads what each builds on through the
    answers layer, makes its relay with the generation service."""

    def __init__(self, answers: Answers, generation: GenerationService) -> None:
        self.answers = answers
        self.generation = generation

    def start(
        self,
        params: GenerateCodeRequest,
        owner: str,
        *,
        request_id: str,
        client: str,
        client_socket: object = None,
        admit: Callable[[], Callable[[], None]] | None = None,
    ) -> Started:
        """A new answer for validated `params`, the owner's. `admit` takes the client's
        stream slot (raising when it has none left) and returns what frees it."""
        prompt, language, model = params.prompt, params.language, params.model
        earlier = None
        if params.continue_answer is not None:
            earlier = self.continuing(params.continue_answer, owner)
        elif params.conversation_id is not None:
            earlier = self.following(params.conversation_id, owner)
        continued = earlier.continues if earlier is not None else None
        files = carried_files(params.attachments, earlier)
        if params.attachments and self.answers.recorder is not None:
            self.make_room(owner, params.attachments)
        if continued is not None:  # a Continue carries on the stored prompt
            prompt, language = continued.prompt, continued.language
            if model is None and continued.model in self.generation.provider.models:
                model = continued.model
        relay = self.generation.relay(
            request_id,
            prompt,
            language=language,
            model=model,
            temperature=params.temperature,
            max_tokens=params.max_tokens,
            client=client,
            turns=earlier.turns if earlier is not None else None,
            partial=continued.text if continued else None,
            files=files,
        )
        relay.watch_client(client_socket)
        if admit is not None:
            relay.cleanups.append(admit())
        recorded = None
        recorder = self.answers.recorder
        if recorder is not None:
            recorded = recorder.begin(
                relay,
                owner,
                prompt=prompt,
                language=language,
                conversation_id=continued.conversation_id if continued else params.conversation_id,
                parent_id=earlier.parent_id if earlier is not None else None,
                continues=continued,
            )
        return Started(relay, recorded, continued.text if continued else "", relay.trimmed_turns)

    def continuing(self, answer_id: str, owner: str) -> Earlier:
        """A Continue of one of the owner's answers: 409 unless it may be carried on
        (cut at its max_tokens, or interrupted); the turns before it."""
        continued = self.answers.answer_of(answer_id, owner, ended=True)
        if not continued.continuable:
            raise Conflict(
                "continue_answer: only an answer that stopped at its max_tokens can be "
                "continued; this one ended on its own.",
            )
        versions = self.answers.store().versions(owner, continued.conversation_id)
        ids = [v.id for v in versions]
        earlier = versions[: ids.index(continued.id)][-MAX_TURNS:] if continued.id in ids else []
        held = self.answers.files().of(owner, continued.id)
        return Earlier(
            [(v.prompt, v.text) for v in earlier if v.text],
            continues=continued,
            files=[Attachment(f.name, f.content) for f in held.attached],
        )

    def following(self, conversation_id: str, owner: str) -> Earlier:
        """A follow-up in one of the owner's conversations: its latest turns, each one
        whole (one that just ended on another worker is waited for); else a 404."""
        stored = self.answers.store()

        def read() -> list[StoredAnswer]:
            return stored.versions(owner, conversation_id, newest=MAX_TURNS)

        versions = read()
        versions = self.answers.freshness.fresh(
            read,
            lambda found: bool(found) and all(map(self.answers.freshness.settled, found)),
            versions,
            row_id=conversation_id,
            missing=not versions,
        )
        if not versions:
            raise NotFound(
                "conversation_id: there is no conversation of yours with that id.",
                code="conversation_not_found",
            )
        parent = versions[-1].id
        return Earlier(
            [(v.prompt, v.text) for v in versions if v.text],
            parent_id=parent,
            files=self.answers.files().of(owner, parent).latest(),
        )

    def make_room(self, owner: str, adding: Sequence[Attachment]) -> None:
        """HISTORY_MAX_FILE_BYTES: a 400 `files_full` when the owner's stored files and
        these new ones would pass it (delete answers to make room)."""
        limit = self.answers.config.history_max_file_bytes
        if not limit or self.answers.recorder is None or not adding:
            return
        new = sum(len(f.content.encode("utf-8", "surrogatepass")) for f in adding)
        held = self.answers.files().bytes_held(owner)
        if held + new > limit:
            raise BadRequest(
                f"files: your history holds {held:,} bytes of files; these {new:,} more would "
                f"pass its limit of {limit:,}. Delete answers with files to make room.",
                code="files_full",
            )


def carried_files(attached: Sequence[Attachment], earlier: Earlier | None) -> list[Attachment]:
    """The files an answer works on: a Continue's own; a follow-up's conversation's
    latest, each replaced by a new attachment of the same name; else its attachments."""
    if earlier is None or not earlier.files:
        return list(attached)
    given = {file.name: file for file in attached}
    files = [given.pop(file.name, file) for file in earlier.files]
    return files + list(given.values())
