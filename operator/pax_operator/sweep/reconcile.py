"""One PaxSweep reconcile pass: observe (sweep + trial PaxJobs) → decide (pure) → feed back, propose, apply.

The trials are read from the operator's PaxJob informer (sweep.trials), not LISTed: a pass whose own
trial writes the watch has not delivered yet waits for them (woken by the event that shows the last one)
and LISTs the trials only when the watch stays behind.

The search algorithm lives in memory per sweep and is rebuilt from the trials' records whenever memory and
records disagree (after an operator restart, or a write that failed half-way): no duplicates, no lost trials.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from pax_operator.adapters.kube import NOT_LEADING_RETRY_SECONDS, Clients, Conflict, api_message
from pax_operator.sweep import kube
from pax_operator.sweep.algorithms import (
    AlgorithmError,
    Proposal,
    Record,
    Search,
    SearchSpace,
    SpaceError,
    is_point,
)
from pax_operator.sweep.decide import (
    MAX_MESSAGE,
    Event,
    ObservedSweep,
    SweepPlan,
    SweepRef,
    TrialView,
    decide_sweep,
    issued_trials,
    next_feedback_seq,
    render_trial,
    set_condition,
    trial_refused,
    trial_view,
)
from pax_operator.sweep.describe import (
    DescribePod,
    describe_pod_name,
    describe_view,
    overridden,
    recorded_names,
    render_describe_pod,
    sweep_parameters,
)
from pax_operator.sweep.spec import (
    ANNOTATION_MEASUREMENTS,
    ANNOTATION_RESULT,
    ANNOTATION_STOP,
    AlgorithmName,
    Goal,
    Parameter,
    PaxSweepSpec,
    PaxSweepStatus,
)
from pax_operator.sweep.trials import EXPECTATIONS_TIMEOUT_SECONDS, TrialCache, Unsettled
from pax_operator.sweep.vizier import (
    MAX_GP_ACTIVE,
    MAX_SUGGESTIONS_PER_CALL,
    Params,
    Suggester,
    bounded_history,
)

log = logging.getLogger(__name__)
CONFLICT_RETRY_SECONDS = 0.2
IDLE_RESYNC_SECONDS = 60.0
# the watch has yet to show this sweep's own trial writes: the event that shows the last of them queues the
# sweep at once (handlers.trial_changed); this requeue is only a safety net (an event missed, a trial edited
# away from its sweep), a quarter of the timeout so the fourth look LISTs. Polling every 0.1 s instead cost
# a GET of the PaxSweep each look, up to 100 per wait
EXPECTATIONS_POLL_SECONDS = EXPECTATIONS_TIMEOUT_SECONDS / 4
PREDECESSOR_RETRY_SECONDS = 2.0  # a name still held by the trial or pod of a deleted same-named sweep
LEAVING = "leaving"
BLOCKED_RETRY_SECONDS = 30.0  # a trial creation refused 403 (quota, terminating namespace, RBAC): next try
CONDITION_BLOCKED = "TrialCreationBlocked"
CONDITION_OVERRIDDEN = "TemplateOverridesIgnored"
# a trial PaxJob's change (every progress scrape of every running trial) reconciles its sweep after this many
# times the sweep's last pass took, within these bounds: the changes meanwhile are one pass. Reconciled on
# each change, a sweep of 10,000 trials (a 10 MB LIST and 0.4 s of CPU a pass) with 1,000 running ran
# back-to-back passes, a sweep worker and a core for it alone
TRIAL_CHANGE_DUTY = 10
TRIAL_CHANGE_DELAY_SECONDS = (0.5, 30.0)
# a sweep waiting for its GP-bandit suggestion is woken when it is done (Suggester.on_done): this is only a
# safety net (and how soon a hung suggestion's deadline is noticed); polling every second made each waiting
# sweep a full pass (its whole trial list) a second while the suggestions queued ahead of it took minutes
SUGGESTION_POLL_SECONDS = 10.0
RECORDS_DO_NOT_FIT = (
    "the trials' records do not fit the search space (spec.parameters, spec.algorithm or the experiment's "
    "space changed after trials were created; create a new sweep)"
)


@dataclass
class _Cached:
    key: str  # what the search depends on: algorithm, parameters, discovered space
    search: Search
    # proposals drawn for the next indices whose creation was forbidden (403), with the feedbacks they had
    # seen: the next pass creates them instead of rebuilding the search (a replay of every record)
    unsent: list[tuple[Proposal, int]] = field(default_factory=list)


type Written = list[tuple[str, dict[str, Any] | None]]  # a pass's trial writes: (name, the answer)


@dataclass
class SweepReconciler:
    """`trials`: where a pass reads the trial PaxJobs (the operator's informer); None: a LIST each pass."""

    clients: Clients
    trials: TrialCache | None = None
    _searches: dict[str, _Cached] = field(default_factory=dict)  # sweep uid → its algorithm
    _uids: dict[tuple[str, str], str] = field(default_factory=dict)  # (namespace, name) → uid
    suggester: Suggester = field(default_factory=Suggester)
    rebuilds: int = 0
    clock: Callable[[], float] = time.monotonic
    _pass_seconds: dict[tuple[str, str], float] = field(default_factory=dict)  # the last pass's, per sweep

    def reconcile_key(self, key: tuple[str, str]) -> float | None:
        """The work queue's entry point: key = (namespace, name)."""
        start = self.clock()
        try:
            return self.reconcile(*key)
        finally:
            if key in self._uids:  # not for a sweep that is gone (its pass forgot it)
                self._pass_seconds[key] = self.clock() - start

    def trial_change_delay(self, key: tuple[str, str]) -> float:
        """How long a trial's change waits before its sweep's pass: TRIAL_CHANGE_DUTY times its last pass."""
        low, high = TRIAL_CHANGE_DELAY_SECONDS
        return min(high, max(low, TRIAL_CHANGE_DUTY * self._pass_seconds.get(key, 0.0)))

    def reconcile(self, namespace: str, name: str) -> float | None:
        """Bring one PaxSweep a step closer to done; seconds to the next look, or None when it is gone."""
        if not self.clients.may_write():  # fenced: leadership unconfirmed; propose nothing on a stale view
            log.warning("%s/%s: not reconciling: leadership not confirmed", namespace, name)
            return NOT_LEADING_RETRY_SECONDS
        sweep = kube.get_sweep(self.clients, namespace, name)
        if sweep is None or sweep["metadata"].get("deletionTimestamp"):
            self._forget(namespace, name)
            return None
        uid = sweep["metadata"]["uid"]
        if self._uids.get((namespace, name), uid) != uid:  # deleted and recreated under the same name
            self._forget(namespace, name)
        self._uids[(namespace, name)] = uid
        jobs = self._read_trials(sweep)
        if jobs is Unsettled.WAIT:
            return EXPECTATIONS_POLL_SECONDS
        written: Written = []
        try:
            return self._pass(sweep, jobs, written)
        finally:
            if self.trials is not None:
                self.trials.expect(uid, namespace, written)

    def _read_trials(self, sweep: dict[str, Any]) -> list[dict[str, Any]] | Unsettled:
        """The sweep's trial PaxJobs: the informer's view once it shows this sweep's own writes; a LIST
        when there is no informer or it has not shown them for too long."""
        metadata = sweep["metadata"]
        if self.trials is not None:
            jobs = self.trials.read(metadata["namespace"], metadata["name"], metadata["uid"])
            if jobs is Unsettled.FIRST:
                listed = kube.list_trials(self.clients, sweep)
                self.trials.listed(metadata["uid"])
                return listed
            if jobs is not Unsettled.RELIST:
                return jobs
            log.warning(
                "%s/%s: the watch has not shown the sweep's own trial writes for %.0fs: listing the trials",
                metadata["namespace"],
                metadata["name"],
                self.trials.timeout,
            )
        return kube.list_trials(self.clients, sweep)

    def _pass(self, sweep: dict[str, Any], jobs: list[dict[str, Any]], written: Written) -> float | None:
        """The pass on the sweep and its trials; the trial writes it made go into `written`."""
        metadata = sweep["metadata"]
        namespace, name, uid = metadata["namespace"], metadata["name"], metadata["uid"]
        part = "spec"
        try:
            spec = PaxSweepSpec.model_validate(sweep.get("spec") or {})
            part = "status"  # e.g. a phase of a newer operator's, read after a rollback: not retried for ever
            status = PaxSweepStatus.model_validate(sweep.get("status") or {})
        except ValidationError as err:
            log.error("%s/%s: %s does not parse, not reconciling: %s", namespace, name, part, err)
            return None
        trials = [t for t in (trial_view(job) for job in jobs) if t is not None]
        search, space_error = self._search(uid, spec, status, trials)
        describe_pod, describe, taken = self._describe_pod(sweep, spec)
        if taken == LEAVING and not status.search_space:
            log.info("%s/%s: waiting for the previous describe pod to go", namespace, name)
            return PREDECESSOR_RETRY_SECONDS
        if not status.search_space and taken != LEAVING:  # another's pod under its name blocks describing
            space_error = space_error or taken
        exhausted = search is not None and _exhausted(spec, search)
        now = datetime.now(UTC)
        ref = SweepRef(name=name, namespace=namespace, uid=uid)
        observed = ObservedSweep(
            sweep=ref,
            spec=spec,
            status=status,
            trials=trials,
            now=now,
            generation=sweep["metadata"].get("generation"),
            exhausted=exhausted,
            space_error=space_error,
            describe=describe,
        )
        plan = decide_sweep(observed)
        if plan.create_describe:
            kube.create_pod(self.clients, render_describe_pod(name, namespace, uid, spec.template))
        measured = dict(plan.measurements)
        along = {r for r, _ in plan.results} | {s for s, _ in plan.stops}  # written with those: one PATCH
        for trial, measurements in plan.measurements:
            if trial not in along:
                annotated = {ANNOTATION_MEASUREMENTS: measurements.to_json()}
                _patched(written, trial, kube.patch_trial(self.clients, namespace, trial, annotated))
        by_name = {t.name: t for t in trials}
        seq = next_feedback_seq(trials, status)
        for trial_name, result in plan.results:
            recorded = replace(result, seq=seq)
            annotations = {ANNOTATION_RESULT: recorded.to_json()}
            if trial_name in measured:
                annotations[ANNOTATION_MEASUREMENTS] = measured[trial_name].to_json()
            _patched(written, trial_name, kube.patch_trial(self.clients, namespace, trial_name, annotations))
            seq += 1
            if search is not None and not (by_name[trial_name].dna and result.credited):
                search.skip_feedback()  # no DNA (a malformed record), or it ran other values: not fed back
            elif search is not None:
                reward = None if result.objective is None else spec.objective.reward(result.objective)
                try:
                    search.feedback(by_name[trial_name].dna, reward)
                except ValueError as err:  # its recorded DNA does not fit: the rebuild says so (_search)
                    log.warning("%s/%s: trial %s: %s", namespace, name, trial_name, err)
                    self._searches.pop(uid, None)
                    search = None
            log.info("%s/%s: trial %s %s (%s)", namespace, name, trial_name, result.state, result.objective)
        for trial_name, reason in plan.stops:
            stop = {ANNOTATION_STOP: reason}
            if trial_name in measured:
                stop[ANNOTATION_MEASUREMENTS] = measured[trial_name].to_json()
            stopped = kube.patch_trial(self.clients, namespace, trial_name, stop, suspend=True)
            _patched(written, trial_name, stopped)
        created = 0
        blocked: str | None = None  # why the apiserver forbade a trial's creation (it may allow it later)
        next_index = issued_trials(trials, status)
        proposals: list[tuple[Proposal, int]] = []  # with the feedbacks the algorithm had seen
        cached = self._searches.get(uid)
        if plan.new_trials and spec.algorithm.name is AlgorithmName.GP_BANDIT:
            try:
                proposals = self._bandit(uid, spec, status, trials, plan, next_index, seq)
            except Exception as err:  # the worker failed or timed out: say so, try again later
                log.warning("%s/%s: GP-bandit suggestion failed: %s", namespace, name, err)
                kube.post_event(
                    self.clients, sweep, Event("Warning", "SuggestionFailed", str(err)[:512]), now
                )
        elif plan.new_trials and search is not None:
            try:
                for _ in range(plan.new_trials):
                    if cached is not None and cached.search is search and cached.unsent:
                        proposals.append(cached.unsent.pop(0))
                        continue
                    proposal = search.propose()
                    if proposal is None:
                        break
                    proposals.append((proposal, seq))
            except SpaceError as err:  # the space passed the checks, yet no point can be drawn from it
                log.warning("%s/%s: %s", namespace, name, err)
                self._searches.pop(uid, None)
                reason = "AlgorithmFailed" if isinstance(err, AlgorithmError) else "InvalidSearchSpace"
                failed = trial_refused(observed, plan.status or status, str(err)[:MAX_MESSAGE], reason)
                kube.write_status(self.clients, sweep, failed)
                kube.post_event(self.clients, sweep, Event("Warning", reason, str(err)[:512]), now)
                return IDLE_RESYNC_SECONDS
        ignored: list[str] = []  # template overrides the created trials' searched values replaced
        if proposals:
            template = (sweep.get("spec") or {})["template"]
            ignored = overridden(spec.template, {n for proposal, _ in proposals for n in proposal.params})
            for offset, (proposal, after) in enumerate(proposals):
                body = render_trial(ref, spec, template, next_index + offset, proposal, after=after)
                trial = body["metadata"]["name"]
                try:
                    fresh = kube.create_trial(self.clients, body)
                    written.append((trial, fresh))  # taken: it exists (seen next pass)
                except ApiException as err:
                    if err.status == 403:  # may pass later (quota freed, RBAC granted): visible, retried
                        blocked = f"trial {trial} could not be created: {api_message(err)}"
                        log.warning("%s/%s: %s", namespace, name, blocked)
                        if search is not None and cached is not None and cached.search is search:
                            cached.unsent = proposals[offset:] + cached.unsent
                        break
                    if err.status not in (400, 422):
                        raise
                    message = f"trial {trial} was refused: {api_message(err)}"
                    log.warning("%s/%s: %s", namespace, name, message)
                    refused = trial_refused(observed, plan.status or status, message)
                    kube.write_status(self.clients, sweep, refused)
                    kube.post_event(self.clients, sweep, Event("Warning", "TrialRefused", message), now)
                    return IDLE_RESYNC_SECONDS
                holder = "ours" if fresh is not None else kube.trial_name_holder(self.clients, sweep, trial)
                if holder == "leaving":
                    log.info("%s/%s: waiting for the previous PaxJob %s to go", namespace, name, trial)
                    self._searches.pop(uid, None)  # rebuilt from the records: the same point comes again
                    return PREDECESSOR_RETRY_SECONDS
                if holder == "another":
                    message = f"PaxJob {trial} exists and is not a trial of this sweep"
                    log.warning("%s/%s: %s", namespace, name, message)
                    kube.write_status(
                        self.clients, sweep, trial_refused(observed, plan.status or status, message)
                    )
                    kube.post_event(self.clients, sweep, Event("Warning", "TrialNameTaken", message), now)
                    return IDLE_RESYNC_SECONDS
                if fresh is None:
                    log.warning("%s/%s: trial %s exists already; reading again", namespace, name, trial)
                    self._searches.pop(uid, None)
                    return CONFLICT_RETRY_SECONDS
                created += 1
        if plan.status is not None:
            missing = plan.new_trials - created
            if missing:  # the space ran out: the counts assumed every planned trial was created
                counts = plan.status.trials
                counts.created -= missing
                counts.running -= missing
        if blocked is not None or created:
            marked = (plan.status or status).model_copy(deep=True)
            if blocked is not None:
                said = next((c for c in marked.conditions if c.type == CONDITION_BLOCKED), None)
                set_condition(marked, CONDITION_BLOCKED, True, "Forbidden", blocked[:MAX_MESSAGE], now)
                if said is None or said.status != "True" or said.message != blocked[:MAX_MESSAGE]:
                    plan.events.append(Event("Warning", CONDITION_BLOCKED, blocked))  # news only
            else:
                set_condition(marked, CONDITION_BLOCKED, False, "TrialsCreated", "trials are created", now)
            if created:
                _mark_overridden(marked, ignored, plan.events, now)
            if marked != (plan.status or status):
                plan.status = marked
        if plan.status is not None:
            try:
                kube.write_status(self.clients, sweep, plan.status)
            except Conflict:
                return CONFLICT_RETRY_SECONDS
        if plan.delete_describe and describe_pod is not None:  # after status keeps what it reported
            kube.delete_pod(self.clients, describe_pod)
        for event in plan.events:
            log.info("%s/%s: %s: %s", namespace, name, event.reason, event.message)
            kube.post_event(self.clients, sweep, event, now)
        if plan.delete_sweep:
            kube.delete_sweep(self.clients, sweep)
            self._forget(namespace, name)
            return None
        if blocked is not None:
            return BLOCKED_RETRY_SECONDS
        if created < plan.new_trials:  # a suggestion is being computed, or the space ran out
            if spec.algorithm.name is AlgorithmName.GP_BANDIT:  # some points came: ask for the rest now
                return 0.0 if created else SUGGESTION_POLL_SECONDS
            return CONFLICT_RETRY_SECONDS
        return IDLE_RESYNC_SECONDS if plan.requeue_after is None else plan.requeue_after

    def _bandit(
        self,
        uid: str,
        spec: PaxSweepSpec,
        status: PaxSweepStatus,
        trials: list[TrialView],
        plan: SweepPlan,
        index: int,
        fed: int,
    ) -> list[tuple[Proposal, int]]:
        """GP-bandit points for the next trials with the feedbacks they saw, [] while the worker computes
        them. The inputs come from the records only (completed trials in feedback order, the rest as active),
        so a restart asks again for the very same suggestion. A record whose values are not a point of the
        space (hand-edited) is left out: Vizier would raise on it at every suggestion.

        A suggestion for the same index that saw fewer feedbacks (trials finished while it was computed) is
        used, not dropped: a sweep whose trials finish more often than a suggestion takes got none, its slots
        draining, while its discarded suggestions kept the one worker every GP-bandit sweep shares."""
        space = _space(spec, status, trials) or []
        results = dict(plan.results)
        finished = []
        active: list[tuple[int, Params]] = []
        for trial in trials:
            if not is_point(space, trial.params):
                continue
            result = trial.result or results.get(trial.name)
            if result is None:
                active.append((trial.index, trial.params))
            elif result.credited:  # not: it ran other values than this point
                finished.append(
                    (result.seq if trial.result else None, trial.index, trial.params, result.objective)
                )
        finished.sort(key=lambda f: (f[0] is None, f[0] or 0, f[1]))  # recorded order, then this pass's
        completed = [(params, objective) for _, _, params, objective in finished]
        completed = bounded_history(completed, maximize=spec.objective.goal is Goal.MAXIMIZE)
        running = [params for _, params in sorted(active, key=lambda a: a[0])[-MAX_GP_ACTIVE:]]
        parameters = [p.model_dump(mode="json") for p in space]
        count = min(plan.new_trials, MAX_SUGGESTIONS_PER_CALL)  # the rest in the next call
        args = (
            parameters,
            str(spec.objective.goal),
            spec.algorithm.seed,
            index,
            completed,
            running,
            count,
        )
        done = self.suggester.ask(
            uid, (index, fed, count), args, usable=lambda key: key[0] == index and key[1] <= fed
        )
        if done is None:
            return []
        (_, seen, _), points = done
        return [
            (Proposal(dna=json.dumps(p, sort_keys=True), params=p), seen) for p in points[: plan.new_trials]
        ]

    def _search(
        self, uid: str, spec: PaxSweepSpec, status: PaxSweepStatus, trials: list[TrialView]
    ) -> tuple[Search | None, str | None]:
        """The sweep's algorithm, in step with the trial records (rebuilt from them when not)."""
        try:
            parameters = _space(spec, status, trials)
            if parameters is None:  # experimentSearchSpace: the describe pod has not reported yet
                self._searches.pop(uid, None)
                return None, None
            if spec.algorithm.name is AlgorithmName.GP_BANDIT:  # the same checks (Vizier's raise late)
                SearchSpace(spec, parameters)
                return None, None  # stateless: every suggestion is computed from the records (_bandit)
        except SpaceError as err:
            self._searches.pop(uid, None)
            return None, str(err)
        # the space searched, not the template: an experiment's space is fixed by the trials' records, so a
        # template edit neither rebuilds the search nor changes its space
        key = json.dumps(
            [spec.algorithm.model_dump(mode="json"), [p.model_dump(mode="json") for p in parameters]],
            sort_keys=True,
        )
        cached = self._searches.get(uid)
        issued, fed = issued_trials(trials, status), next_feedback_seq(trials, status)
        if (
            cached is not None
            and cached.key == key
            and cached.search.proposed - len(cached.unsent) == issued
            and (cached.search.fed == fed)
        ):
            return cached.search, None
        try:
            search = Search(spec, parameters)
            search.replay(_records(spec, trials), issued, fed)
        except SpaceError as err:
            self._searches.pop(uid, None)
            return None, str(err)
        except ValueError as err:  # PyGlove: a recorded DNA is not a point of this space
            self._searches.pop(uid, None)
            return None, f"{RECORDS_DO_NOT_FIT}: {err}"[:MAX_MESSAGE]
        if search.diverged:
            log.warning(
                "sweep %s: %d recorded trials differ from the replayed proposals", uid, search.diverged
            )
        self.rebuilds += 1
        self._searches[uid] = _Cached(key, search)
        return search, None

    def _describe_pod(
        self, sweep: dict[str, Any], spec: PaxSweepSpec
    ) -> tuple[dict[str, Any] | None, DescribePod | None, str | None]:
        """The sweep's describe pod (raw, viewed), or why its name is taken by a pod it does not own (a
        pod it does not own is never touched): LEAVING while a deleted same-named sweep's pod holds it."""
        namespace, name = sweep["metadata"]["namespace"], sweep["metadata"]["name"]
        if not spec.experiment_search_space:
            return None, None, None
        pod = kube.get_pod(self.clients, namespace, describe_pod_name(name))
        if pod is None:
            return None, None, None
        holder = kube.name_holder(pod, sweep)
        if holder == "leaving":
            return None, None, LEAVING
        if holder == "another":
            return None, None, f"pod {describe_pod_name(name)} exists and is not this sweep's describe pod"
        return pod, describe_view(pod), None

    def key_of(self, uid: str) -> tuple[str, str] | None:
        """The (namespace, name) of a sweep this reconciler knows by uid (any thread may ask)."""
        return next((key for key, known in list(self._uids.items()) if known == uid), None)

    def _forget(self, namespace: str, name: str) -> None:
        self._pass_seconds.pop((namespace, name), None)
        uid = self._uids.pop((namespace, name), None)
        if uid is not None:
            self._searches.pop(uid, None)
            self.suggester.forget(uid)
            if self.trials is not None:
                self.trials.reset(uid)


def _mark_overridden(status: PaxSweepStatus, names: list[str], events: list[Event], now: datetime) -> None:
    """Condition TemplateOverridesIgnored while trials are created with searched values the template also
    fixes (an experimentSearchSpace sweep's template edited after its first trial), a Warning on news."""
    said = next((c for c in status.conditions if c.type == CONDITION_OVERRIDDEN), None)
    if not names:
        if said is not None and said.status == "True":
            message = "template.overrides fixes no searched hyperparameter"
            set_condition(status, CONDITION_OVERRIDDEN, False, "NoneIgnored", message, now)
        return
    message = (
        f"the template fixes {', '.join(names)}, searched by this sweep since its first trial: each trial"
        " runs its proposed value (the space cannot change under the trials' records; to fix these, create"
        " a new sweep)"
    )[:MAX_MESSAGE]
    set_condition(status, CONDITION_OVERRIDDEN, True, "SearchedParameters", message, now)
    if said is None or said.status != "True" or said.message != message:
        events.append(Event("Warning", CONDITION_OVERRIDDEN, message))


def _space(spec: PaxSweepSpec, status: PaxSweepStatus, trials: list[TrialView]) -> list[Parameter] | None:
    """The parameters searched: an experiment's space as the trials' records fixed it (sweep_parameters)."""
    if not (spec.experiment_search_space and status.search_space and trials):
        return sweep_parameters(spec, status.search_space)
    return sweep_parameters(spec, status.search_space, recorded_names((t.index, t.params) for t in trials))


def _patched(written: Written, trial: str, answer: dict[str, Any] | None) -> None:
    """A patched trial's answer is expected from the watch (None: the trial is gone, nothing to expect)."""
    if answer is not None:
        written.append((trial, answer))


def _exhausted(spec: PaxSweepSpec, search: Search) -> bool:
    if spec.algorithm.name is not AlgorithmName.GRID:
        return search.exhausted
    size = search.space.size
    return search.exhausted or (size is not None and search.proposed >= size)


def _records(spec: PaxSweepSpec, trials: list[TrialView]) -> list[Record]:
    records = []
    for trial in trials:
        result = trial.result
        reward = None
        if result is not None and result.objective is not None:
            reward = spec.objective.reward(result.objective)
        records.append(
            Record(
                index=trial.index,
                dna=trial.dna,
                after=trial.after,
                seq=None if result is None else result.seq,
                reward=reward,
                credited=result is None or result.credited,
            )
        )
    return records
