//! Loading policies and exclusions into the kernel tables.
//!
//! A policy is written into the slot the programs do not use, then published by one store of
//! the `POLICY_ACTIVE` word (slot and a new generation). After an RCU grace period no program
//! still reads the old slot, so the next reload may overwrite it. Every packet therefore sees
//! either the whole old policy or the whole new one, and the new generation invalidates every
//! verdict cached under the old one.

use aya::maps::{Array, MapData};
use flowlog_common::{
    maps::{ACL_RULES, EXCLUSION_COUNT, EXCLUSIONS, POLICY_ACTIVE, POLICY_CONFIG, SG_RULES},
    policy::{PolicyConfig, Rule, active_word},
};

use super::{DatapathError, take_map};
use crate::{policy::CompiledPolicy, sys};

pub(super) struct PolicyTables {
    active: Array<MapData, u32>,
    configs: [Array<MapData, PolicyConfig>; 2],
    acl: [Array<MapData, Rule>; 2],
    sg: [Array<MapData, Rule>; 2],
    exclusions: Array<MapData, Rule>,
    exclusion_count: Array<MapData, u32>,
    /// The slot the programs read, if a policy is loaded.
    live: Option<u32>,
    generation: u32,
}

fn map_error(name: &'static str) -> impl Fn(aya::maps::MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

impl PolicyTables {
    pub(super) fn take(ebpf: &mut aya::Ebpf) -> Result<Self, DatapathError> {
        Ok(Self {
            active: take_map(ebpf, POLICY_ACTIVE)?,
            configs: [
                take_map(ebpf, POLICY_CONFIG[0])?,
                take_map(ebpf, POLICY_CONFIG[1])?,
            ],
            acl: [take_map(ebpf, ACL_RULES[0])?, take_map(ebpf, ACL_RULES[1])?],
            sg: [take_map(ebpf, SG_RULES[0])?, take_map(ebpf, SG_RULES[1])?],
            exclusions: take_map(ebpf, EXCLUSIONS)?,
            exclusion_count: take_map(ebpf, EXCLUSION_COUNT)?,
            live: None,
            generation: 0,
        })
    }

    /// Publishes `policy` (or removes the policy with `None`) and waits until no program reads
    /// the previous one. Returns the new generation.
    pub(super) fn publish(
        &mut self,
        policy: Option<&CompiledPolicy>,
    ) -> Result<u32, DatapathError> {
        self.generation = self.generation.wrapping_add(1) & (u32::MAX >> 2);
        let word = match policy {
            None => 0,
            Some(policy) => {
                let slot = self.live.map_or(0, |live| 1 - live);
                let s = slot as usize;
                for (i, rule) in policy.acl_rules.iter().enumerate() {
                    self.acl[s]
                        .set(i as u32, rule, 0)
                        .map_err(map_error(ACL_RULES[s]))?;
                }
                for (i, rule) in policy.sg_rules.iter().enumerate() {
                    self.sg[s]
                        .set(i as u32, rule, 0)
                        .map_err(map_error(SG_RULES[s]))?;
                }
                self.configs[s]
                    .set(0, policy.config, 0)
                    .map_err(map_error(POLICY_CONFIG[s]))?;
                self.live = Some(slot);
                active_word(slot, self.generation)
            }
        };
        if policy.is_none() {
            self.live = None;
        }
        self.active
            .set(0, word, 0)
            .map_err(map_error(POLICY_ACTIVE))?;
        sys::wait_for_running_programs().map_err(|source| DatapathError::Syscall {
            call: "membarrier(MEMBARRIER_CMD_GLOBAL)",
            source,
        })?;
        Ok(self.generation)
    }

    /// Replaces the exclusion list. Called before attaching: the count is written last, so a
    /// program never reads an entry that is not written yet.
    pub(super) fn set_exclusions(&mut self, rules: &[Rule]) -> Result<(), DatapathError> {
        self.exclusion_count
            .set(0, 0, 0)
            .map_err(map_error(EXCLUSION_COUNT))?;
        for (i, rule) in rules.iter().enumerate() {
            self.exclusions
                .set(i as u32, rule, 0)
                .map_err(map_error(EXCLUSIONS))?;
        }
        self.exclusion_count
            .set(0, rules.len() as u32, 0)
            .map_err(map_error(EXCLUSION_COUNT))
    }
}
