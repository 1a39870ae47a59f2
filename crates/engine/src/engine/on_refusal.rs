//! What the loop does with a refused connection moat answers itself (`refusal.rs`, deny
//! mode `explain`): it is taken into the table within its limits, and moved along when
//! its socket or its deadline says so.

use std::time::Instant;

use moat_policy::Decision;

use super::cx::Cx;
use super::key::{FlowId, Segment};
use super::refusal::{self, MAX_REFUSALS, Refusal, Step};
use super::table::{Flow, FlowTable};

/// Accepts the refused connection whose SYN is `seg` (already audited); it is answered
/// here. Past a limit it is reset, as under `reject`.
pub(super) fn open(table: &mut FlowTable, cx: &mut Cx, seg: Segment<'_>, decision: &Decision) {
    if table.refusals() >= MAX_REFUSALS.min(cx.cfg.max_connections / 2) || table.connections_full()
    {
        return refusal::skip(cx, &seg);
    }
    let Some(refusal) = Refusal::accept(cx, &seg, decision) else {
        return;
    };
    let id = table.reserve();
    table.insert(id, Flow::Refusal(refusal));
    cx.stack.feed(seg.frame);
    table.touch(id);
}

/// Moves a refused connection along: reads, answers, resets, or ends it.
pub(super) fn relay(table: &mut FlowTable, cx: &mut Cx, id: FlowId) {
    let Some(Flow::Refusal(r)) = table.get_mut(id) else {
        return;
    };
    match r.step(cx, Instant::now()) {
        Step::Continue => {}
        Step::Doom(why) => table.doom(id, why),
    }
}
