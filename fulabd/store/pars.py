"""
The `.par.edn` sidecar, the reactor side: a session's PARs are read (in a
thread) the first time they are needed, kept in memory, and a new one is
written with the session's next commit.  Part of `SessionStore` (a mixin over
its state).
"""

from __future__ import annotations

from twisted.internet import defer

from fulabd.messages import UNKNOWN_SESSION, ProtocolError, now_iso
from fulabd.par_schema import MAX_PARS_PER_SESSION, bad, checked_par
from fulabd.store.recovery import Loaded, read_sidecar
from fulabd.store.session import Session


class SessionPars:
    """PARs checked, deduplicated by id and bounded per session."""


    def pars(self, session: Session) -> list[dict]:
        """The session's PARs (read from the sidecar on first use, then kept in memory)."""
        if session.pars is None:
            self._adopt_pars(session, read_sidecar(self._root, session.par_name, list, self.clock.seconds(),
                                                   self._note))
        return session.pars

    def _adopt_pars(self, session: Session, pars: list | None) -> None:
        if session.pars is None:
            session.pars = pars or []
            session.par_ids = {par.get("id") for par in session.pars if isinstance(par, dict)}
            session.par_count = len(session.pars)

    def _pars_read(self, session: Session) -> defer.Deferred:
        """Fires once the session's PARs are in memory, read in a thread (a sidecar may be megabytes)."""
        if session.pars is not None:
            return defer.succeed(None)
        notes = Loaded()
        reading = self._run_in_thread(read_sidecar, self._root, session.par_name, list, self.clock.seconds(),
                                      notes.note)

        def read(pars):
            self._log_notes(notes)
            self._adopt_pars(session, pars)

        return reading.addCallback(read)

    def add_par(self, session_id: str, par: dict, author: str | None = None) -> defer.Deferred:
        """Check a PAR and append it to the session's sidecar; fires with (index, par, added) once durable.

        A PAR whose id is already stored is not added again. The reactor's cost is that of the new PAR:
        the sidecar is read (once) and rewritten in threads.
        """
        return self._when_loaded(self._add_par, session_id, par, author)

    def _add_par(self, session_id: str, par: dict, author: str | None) -> defer.Deferred:
        try:
            par = checked_par(par, author)
            session = self._session(session_id)
            if not session.stored or session.written == 0:
                raise ProtocolError(UNKNOWN_SESSION, f"no session {session_id!r} with lines is stored; "
                                                     "upload its lines before its PARs")
        except ProtocolError as e:
            return defer.fail(e)
        return self._pars_read(session).addCallback(lambda _: self._add_read_par(session, par))

    def _add_read_par(self, session: Session, par: dict) -> defer.Deferred:
        pars = session.pars
        if par["id"] in session.par_ids:
            index = next(i for i, old in enumerate(pars) if isinstance(old, dict) and old.get("id") == par["id"])
            return self._durable(session).addCallback(lambda _: (index, pars[index], False))
        if len(pars) >= MAX_PARS_PER_SESSION:
            return defer.fail(bad("par", f"the session has {len(pars)} PARs, the most one session may have"))
        par.setdefault("timestamp", now_iso(self.clock.seconds()))
        pars.append(par)
        session.par_ids.add(par["id"])
        index = len(pars) - 1
        session.par_count = len(pars)
        session.pending_pars.append((index, par))
        session.write_pars = True
        self._dirty.add(session)
        self._meta_changed(session)
        return self._durable(session).addCallback(lambda _: (index, par, True))
