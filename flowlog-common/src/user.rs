//! `aya::Pod` for the shared types, so the agent can read them out of maps.

use crate::{
    flow::{FlowCounters, FlowKey, PacketCount, SkipKey},
    policy::{ConnKey, ConnState, PolicyConfig, Rule, RuleList, RuleWord},
};

// SAFETY: all of them are `#[repr(C)]`, `Copy`, made only of integers and byte arrays, and have no
// implicit padding (checked by `flow::tests::layouts_have_no_hidden_padding`), so every byte
// pattern is a valid value.
unsafe impl aya::Pod for FlowKey {}
unsafe impl aya::Pod for FlowCounters {}
unsafe impl aya::Pod for SkipKey {}
unsafe impl aya::Pod for PacketCount {}
unsafe impl aya::Pod for PolicyConfig {}
unsafe impl aya::Pod for Rule {}
unsafe impl aya::Pod for ConnKey {}
unsafe impl aya::Pod for ConnState {}
unsafe impl aya::Pod for RuleList {}
unsafe impl aya::Pod for RuleWord {}

// SAFETY: as above: `#[repr(C)]`, integers only, no implicit padding (checked by
// `drops::tests::layouts_have_no_hidden_padding`).
unsafe impl aya::Pod for crate::drops::DropKey {}
unsafe impl aya::Pod for crate::drops::DropConfig {}
unsafe impl aya::Pod for crate::drops::OwnDrop {}
