"""Tool calls: recording, reading, the decision's compare-and-set, transitions and retries (the sweeper's claims
are :mod:`mcp_gatekeeper.store.sweeps`).

Every state change is a compare-and-set ``UPDATE ... WHERE state IN (...)`` and appends its audit event in the
same transaction (:func:`mcp_gatekeeper.store.audit.append`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from mcp_gatekeeper.errors import AlreadyDecidedError, CallNotFoundError
from mcp_gatekeeper.models import CallRecord, NewCall, State, canonical_json, digest, new_call_id
from mcp_gatekeeper.signatures import DecisionFacts
from mcp_gatekeeper.store import schema
from mcp_gatekeeper.store.audit import append
from mcp_gatekeeper.store.engine import DecidesThroughTheDatabase, Engine, Tx


class Calls:
    """The ``calls`` table (and the requestState nonces spent on them)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def insert(
        self,
        new: NewCall,
        *,
        state: State,
        deadline_at: float | None = None,
        reason: str | None = None,
        instance_id: str | None,
        fsync_every_call: bool = False,
        escalate_after: float | None = None,
    ) -> CallRecord:
        """Record a new call (``allowed``, ``denied`` or ``pending``) and its audit event, atomically.
        ``escalate_after``: seconds from now to its first escalation step (the sweeper looks at it then)."""
        cid = new_call_id()
        now = self._engine.clock.now()
        args_digest = new.args_digest
        finished = now if state == State.DENIED else None

        def _body(c: Tx) -> Any:
            c.execute(
                f"INSERT INTO calls ({schema.CALL_COLUMNS}, session, principal, escalate_at)"
                f" VALUES ({', '.join('?' * 35)})",
                (
                    cid, state.value, new.upstream, new.tool, canonical_json(new.arguments), args_digest, new.gate,
                    new.risk, new.rule, new.tooldef_hash, new.summary, canonical_json(new.effects),
                    canonical_json(list(new.reasons)), new.agent_reason, new.agent_confidence,
                    canonical_json(new.client), None if new.input_schema is None else canonical_json(new.input_schema),
                    instance_id, now, deadline_at, None, None, None, reason, None, None, None, finished,
                    new.wait_strategy, new.shadow_action, new.shadow_rule, new.shadow_reason,
                    new.client.get("session"), new.client.get("principal"),
                    None if escalate_after is None else now + escalate_after,
                ),
            )  # fmt: skip
            append(
                c,
                self._engine.clock,
                event={State.PENDING: "held"}.get(state, state.value),
                call_id=cid,
                actor="policy",
                channel="policy",
                args_digest=args_digest,
                detail={
                    "upstream": new.upstream,
                    "tool": new.tool,
                    "gate": new.gate,
                    "risk": new.risk,
                    "rule": new.rule,
                    "reason": reason,
                    "deadline_at": deadline_at,
                    "client": new.client.get("name"),
                },
            )

        await self._engine.write(_body, fsync=state == State.PENDING or fsync_every_call)
        # the row is exactly what was inserted: build it instead of reading and re-parsing it
        return CallRecord(
            id=cid, state=state, upstream=new.upstream, tool=new.tool, arguments=new.arguments,
            args_digest=args_digest, gate=new.gate, risk=new.risk, created_at=now, rule=new.rule,
            tooldef_hash=new.tooldef_hash, summary=new.summary, effects=dict(new.effects), reasons=tuple(new.reasons),
            agent_reason=new.agent_reason, agent_confidence=new.agent_confidence, client=dict(new.client),
            input_schema=new.input_schema, instance_id=instance_id, deadline_at=deadline_at, reason=reason,
            finished_at=finished, wait_strategy=new.wait_strategy, shadow_action=new.shadow_action,
            shadow_rule=new.shadow_rule, shadow_reason=new.shadow_reason,
        )  # fmt: skip

    async def get(self, call_id: str) -> CallRecord:
        rows = await self._engine.read(f"SELECT {schema.CALL_COLUMNS} FROM calls WHERE id = ?", (call_id,))
        if not rows:
            raise CallNotFoundError(f"no call with id {call_id!r}")
        return schema.call_record(rows[0])

    async def find(self, prefix: str) -> CallRecord:
        """The call whose id is ``prefix`` or starts with it; an ambiguous prefix is refused."""
        prefix = prefix.strip().lower()
        if not prefix or any(ch not in "0123456789abcdef" for ch in prefix):
            raise CallNotFoundError(f"no call with id {prefix!r} (ids are lowercase hex)")
        rows = await self._engine.read(
            f"SELECT {schema.CALL_COLUMNS} FROM calls WHERE id >= ? AND id < ? ORDER BY id LIMIT 2",
            (prefix, prefix + "g"),
        )
        if not rows:
            raise CallNotFoundError(f"no call with id {prefix!r}")
        if len(rows) > 1:
            raise CallNotFoundError(f"id prefix {prefix!r} is ambiguous; type more characters")
        return schema.call_record(rows[0])

    async def list_calls(
        self,
        *,
        states: Sequence[str] | None = None,
        upstream: str | None = None,
        tool: str | None = None,
        decided_by: str | None = None,
        text: str | None = None,
        limit: int = 100,
        before: tuple[float, str] | None = None,
        oldest_first: bool = False,
    ) -> list[CallRecord]:
        where: list[str] = []
        params: list[Any] = []
        if states:
            where.append(f"state IN ({schema.placeholders(states)})")
            params.extend(states)
        for col, val in (("upstream", upstream), ("tool", tool), ("decided_by", decided_by)):
            if val is not None:
                where.append(f"{col} = ?")
                params.append(val)
        if text:
            where.append(
                "(summary LIKE ? ESCAPE '\\' OR arguments LIKE ? ESCAPE '\\' OR reason LIKE ? ESCAPE '\\' OR tool LIKE ? ESCAPE '\\')"
            )
            like = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            params.extend([like] * 4)
        if before is not None:
            op = ">" if oldest_first else "<"
            where.append(f"(created_at, id) {op} (?, ?)")
            params.extend(before)
        order = "ASC" if oldest_first else "DESC"
        sql = f"SELECT {schema.CALL_COLUMNS} FROM calls"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY created_at {order}, id {order} LIMIT ?"
        params.append(limit)
        return [schema.call_record(r) for r in await self._engine.read(sql, params)]

    async def watch_marks(self, ids: Sequence[str]) -> dict[str, tuple[State, float | None]]:
        """Each call's state and deadline: what a waiter is woken for (a decision, or an escalation that moved the
        deadline)."""
        if not ids:
            return {}
        rows = await self._engine.read(
            f"SELECT id, state, deadline_at FROM calls WHERE id IN ({schema.placeholders(ids)})", list(ids)
        )
        return {r[0]: (State(r[1]), r[2]) for r in rows}

    async def states_of(self, ids: Sequence[str]) -> dict[str, State]:
        if not ids:
            return {}
        rows = await self._engine.read(
            f"SELECT id, state FROM calls WHERE id IN ({schema.placeholders(ids)})", list(ids)
        )
        return {r[0]: State(r[1]) for r in rows}

    async def decide(
        self,
        call_id: str,
        *,
        approve: bool,
        decided_by: str,
        channel: str,
        reason: str | None,
        modified_arguments: dict[str, Any] | None,
        expected_digest: str | None,
        detail: dict[str, Any] | None = None,
        sign: Callable[[DecisionFacts], dict[str, Any]] | None = None,
    ) -> CallRecord:
        """The one compare-and-set of a human decision: first writer wins, late or stale writers lose.

        ``sign`` (the deciding process's :meth:`~mcp_gatekeeper.signatures.Signer.seal`) signs what is written,
        with the time it is written; the signature goes into the row and the audit event.
        """
        if isinstance(self._engine, DecidesThroughTheDatabase):
            await self._engine.decide_call(
                call_id, state=State.APPROVED if approve else State.REJECTED, decided_by=decided_by, channel=channel,
                reason=reason, modified_arguments=modified_arguments, expected_digest=expected_digest, detail=detail,
                sign=sign,
            )  # fmt: skip
            return await self.get(call_id)
        now = self._engine.clock.now()
        new_state = State.APPROVED if approve else State.REJECTED
        to_run = None if modified_arguments is None else digest(modified_arguments)

        def _body(c: Tx) -> Any:
            row = c.execute("SELECT state, args_digest, deadline_at FROM calls WHERE id = ?", (call_id,)).fetchone()
            if row is None:
                raise CallNotFoundError(f"no call with id {call_id!r}")
            state, args_digest, deadline_at = row
            if state != State.PENDING:
                raise AlreadyDecidedError(f"call {call_id[:12]} is already {state}", state=state, why="decided")
            if deadline_at is not None and now >= deadline_at:
                raise AlreadyDecidedError(
                    f"call {call_id[:12]} has expired (its deadline passed)", state=state, why="expired"
                )
            if expected_digest is not None and expected_digest != args_digest:
                raise AlreadyDecidedError(
                    f"call {call_id[:12]}: the arguments you reviewed are not the ones held (stale digest); reload and review again",
                    state=state,
                    why="stale_digest",
                )
            seal = None
            if sign is not None:
                seal = sign(
                    DecisionFacts(
                        call_id=call_id, decision=new_state.value, args_digest=to_run or args_digest,
                        decided_by=decided_by, channel=channel, decided_at=now,
                    )
                )  # fmt: skip
            cur = c.execute(
                "UPDATE calls SET state = ?, decided_at = ?, decided_by = ?, channel = ?, reason = ?, modified_arguments = ?,"
                " decision_sig = ? WHERE id = ? AND state = 'pending' AND args_digest = ?",
                (
                    new_state, now, decided_by, channel, reason,
                    None if modified_arguments is None else canonical_json(modified_arguments),
                    None if seal is None else canonical_json(seal), call_id, args_digest,
                ),
            )  # fmt: skip
            if cur.rowcount != 1:
                raise AlreadyDecidedError(f"call {call_id[:12]} was decided by someone else", why="decided")
            d = dict(detail or {})
            if reason:
                d["reason"] = reason
            if to_run is not None:
                d["modified_args_digest"] = to_run
            if seal is not None:
                d["signature"] = seal
            append(
                c,
                self._engine.clock,
                event="approved" if approve else "rejected",
                call_id=call_id,
                actor=decided_by,
                channel=channel,
                args_digest=args_digest,
                detail=d,
            )
            return schema.call_record(
                c.execute(f"SELECT {schema.CALL_COLUMNS} FROM calls WHERE id = ?", (call_id,)).fetchone()
            )

        decided: CallRecord = await self._engine.write(_body)
        return decided

    async def decision_signature(self, call_id: str) -> Any:
        """The signature stored with a call's decision (``None``: unsigned, or the column was emptied)."""
        rows = await self._engine.read("SELECT decision_sig FROM calls WHERE id = ?", (call_id,))
        if not rows:
            raise CallNotFoundError(f"no call with id {call_id!r}")
        return schema.loads(rows[0][0])

    async def transition(
        self,
        call_id: str,
        from_states: Sequence[State],
        to_state: State,
        *,
        event: str | None = None,
        actor: str = "gatekeeper",
        channel: str = "proxy",
        detail: dict[str, Any] | None = None,
        **fields: Any,
    ) -> CallRecord | None:
        """CAS ``from_states → to_state`` setting ``fields``; ``None`` if the call was not in ``from_states``."""
        allowed = {
            "result", "error", "finished_at", "reason", "decided_at", "decided_by", "wait_strategy",
            "capture", "deadline_at", "decision_channel", "instance_id",
        }  # fmt: skip
        if bad := set(fields) - allowed:
            raise ValueError(f"cannot set {bad}")
        human = to_state in (State.CONFIRMED, State.REVIEW_FAILED) and fields.get("decided_by") is not None
        if human and isinstance(self._engine, DecidesThroughTheDatabase):  # a review is a decision too
            if not set(from_states) <= {State.UNDER_REVIEW, State.UNREVIEWED} or set(fields) - {
                "reason",
                "decided_at",
                "decided_by",
                "decision_channel",
            }:
                raise ValueError(f"a review moves a call under review to {to_state}, setting who decided and why")
            try:
                await self._engine.decide_call(
                    call_id, state=to_state, decided_by=fields["decided_by"],
                    channel=fields.get("decision_channel") or channel, reason=fields.get("reason"),
                    modified_arguments=None, expected_digest=None,
                    detail={k: v for k, v in (detail or {}).items() if k != "reason"},
                )  # fmt: skip
            except AlreadyDecidedError:
                return None
            return await self.get(call_id)
        sets = ["state = ?"]
        params: list[Any] = [to_state.value]
        for k, v in fields.items():
            col = "channel" if k == "decision_channel" else k  # `channel` names the audit event's channel
            sets.append(f"{col} = ?")
            params.append(canonical_json(v) if k in ("result", "capture") and v is not None else v)

        def _body(c: Tx) -> Any:
            # the row comes back with the update: one round trip fewer while the chain's lock is held
            rows = c.execute(
                f"UPDATE calls SET {', '.join(sets)} WHERE id = ? AND state IN ({schema.placeholders(from_states)})"
                f" RETURNING {schema.CALL_COLUMNS}",
                (*params, call_id, *from_states),
            ).fetchall()
            if len(rows) != 1:
                return None
            rec = schema.call_record(rows[0])
            append(
                c,
                self._engine.clock,
                event=event or to_state.value,
                call_id=call_id,
                actor=actor,
                channel=channel,
                args_digest=rec.args_digest,
                detail=detail or {},
            )
            return rec

        changed: CallRecord | None = await self._engine.write(_body)
        return changed

    async def finish(
        self,
        call_id: str,
        from_state: State,
        to_state: State,
        *,
        result: dict[str, Any] | None,
        error: str | None,
        detail: dict[str, Any],
        args_digest: str,
        fsync_every_call: bool = False,
    ) -> bool:
        """CAS ``from_state → to_state`` recording how a forwarded call ended (no read-back: nobody needs it).

        ``args_digest`` is the call's own (the caller holds its record); it goes into the audit event.
        """
        now = self._engine.clock.now()

        def _body(c: Tx) -> bool:
            cur = c.execute(
                "UPDATE calls SET state = ?, result = ?, error = ?, finished_at = ? WHERE id = ? AND state = ?",
                (to_state.value, None if result is None else canonical_json(result), error, now, call_id, from_state),
            )
            if cur.rowcount != 1:
                return False
            append(c, self._engine.clock, event=to_state.value, call_id=call_id, actor="gatekeeper", channel="proxy",
                args_digest=args_digest, detail=detail,
            )  # fmt: skip
            return True

        # the outcome of a call that was never held is bookkeeping: fsynced lazily (see _tx)
        lazy = from_state == State.ALLOWED and not fsync_every_call
        done: bool = await self._engine.write(_body, fsync=not lazy)
        return done

    async def find_retry(
        self, upstream: str, tool: str, args_digest: str, *, now: float, grace: float, principal: str | None
    ) -> CallRecord | None:
        """The held call an identical retry attaches to, whichever process holds it (or none: released).

        Same principal (the client identity, see :mod:`mcp_gatekeeper.principals`), upstream, tool and
        arguments digest; a call whose client was told to retry (``retry_offered``); still within its deadline
        plus ``grace``. Without a principal nothing attaches: a call is never attached to on behalf of another.
        """
        if not principal:
            return None
        rows = await self._engine.read(
            f"SELECT {schema.CALL_COLUMNS} FROM calls WHERE principal = ? AND upstream = ? AND tool = ? AND args_digest = ?"
            " AND retry_offered = 1 AND deadline_at + ? > ? AND state NOT IN ('cancelled', 'orphaned')"
            " ORDER BY created_at DESC LIMIT 1",
            (principal, upstream, tool, args_digest, grace, now),
        )
        return schema.call_record(rows[0]) if rows else None

    async def find_for(self, prefix: str, *, principal: str | None, upstreams: Sequence[str]) -> CallRecord:
        """Like :meth:`find`, but only among the calls of ``principal`` to ``upstreams``.

        Another principal's call is "not found", exactly as a call that does not exist (an ambiguous prefix is
        judged among this principal's calls only, so it does not reveal that other calls exist either).
        """
        prefix = prefix.strip().lower()
        if not prefix or any(ch not in "0123456789abcdef" for ch in prefix) or not principal or not upstreams:
            raise CallNotFoundError(f"no call with id {prefix!r}")
        rows = await self._engine.read(
            f"SELECT {schema.CALL_COLUMNS} FROM calls WHERE id >= ? AND id < ? AND principal = ? AND upstream IN ({schema.placeholders(upstreams)})"
            " ORDER BY id LIMIT 2",
            (prefix, prefix + "g", principal, *upstreams),
        )
        if not rows:
            raise CallNotFoundError(f"no call with id {prefix!r}")
        if len(rows) > 1:
            raise CallNotFoundError(f"id prefix {prefix!r} is ambiguous; type more characters")
        return schema.call_record(rows[0])

    async def principal_of(self, call_id: str) -> str | None:
        rows = await self._engine.read("SELECT principal FROM calls WHERE id = ?", (call_id,))
        return rows[0][0] if rows else None

    async def mark_retry_offered(self, call_id: str, *, strategy: str) -> None:
        """The client was answered "still waiting, retry": a later identical call attaches to this one."""

        def _body(c: Tx) -> Any:
            c.execute("UPDATE calls SET retry_offered = 1, wait_strategy = ? WHERE id = ?", (strategy, call_id))
            append(c, self._engine.clock, event="retry_offered", call_id=call_id, actor="gatekeeper", channel="proxy",
                detail={"strategy": strategy},
            )  # fmt: skip

        await self._engine.write(_body)

    async def consume_state(self, nonce: str, call_id: str) -> bool:
        """Record a requestState nonce as used; False if it was used before (a replay)."""

        def _body(c: Tx) -> Any:
            cur = c.execute(
                "INSERT OR IGNORE INTO used_states (nonce, call_id, used_at) VALUES (?, ?, ?)",
                (nonce, call_id, self._engine.clock.now()),
            )
            return cur.rowcount == 1

        used: bool = await self._engine.write(_body)
        return used

    async def holder_instance(self, call_id: str) -> str | None:
        """The process that holds a call, or (a released call) the one that held it last."""
        rows = await self._engine.read(
            "SELECT COALESCE(instance_id, released_from) FROM calls WHERE id = ?", (call_id,)
        )
        return rows[0][0] if rows else None

    async def capture_of(self, call_id: str) -> Any:
        rows = await self._engine.read("SELECT capture FROM calls WHERE id = ?", (call_id,))
        return schema.loads(rows[0][0]) if rows else None
