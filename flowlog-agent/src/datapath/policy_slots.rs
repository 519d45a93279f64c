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
    policy::{
        GENERATION_MASK, MAX_EXCLUSIONS, PolicyConfig, Rule, active_slot, active_word,
        word_generation,
    },
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
    /// The generation of the last word written (by this agent or the one before it).
    generation: u32,
}

fn map_error(name: &'static str) -> impl Fn(aya::maps::MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

impl PolicyTables {
    /// Takes the tables out of the object. With pinned maps a previous agent's policy may be
    /// live: its slot and generation are read back, so the next publish uses the other slot and
    /// a generation never used on these maps.
    pub(super) fn take(ebpf: &mut aya::Ebpf) -> Result<Self, DatapathError> {
        let active: Array<MapData, u32> = take_map(ebpf, POLICY_ACTIVE)?;
        let word = active.get(&0, 0).map_err(map_error(POLICY_ACTIVE))?;
        Ok(Self {
            active,
            configs: [
                take_map(ebpf, POLICY_CONFIG[0])?,
                take_map(ebpf, POLICY_CONFIG[1])?,
            ],
            acl: [take_map(ebpf, ACL_RULES[0])?, take_map(ebpf, ACL_RULES[1])?],
            sg: [take_map(ebpf, SG_RULES[0])?, take_map(ebpf, SG_RULES[1])?],
            exclusions: take_map(ebpf, EXCLUSIONS)?,
            exclusion_count: take_map(ebpf, EXCLUSION_COUNT)?,
            live: active_slot(word),
            generation: word_generation(word),
        })
    }

    /// What the programs decide with now: the `POLICY_ACTIVE` word and the exclusions, to put
    /// back with [`PolicyTables::restore`] if a start is refused after changing them.
    pub(super) fn in_force(&self) -> Result<InForce, DatapathError> {
        let word = self.active.get(&0, 0).map_err(map_error(POLICY_ACTIVE))?;
        let count = self
            .exclusion_count
            .get(&0, 0)
            .map_err(map_error(EXCLUSION_COUNT))?;
        let exclusions = (0..count.min(MAX_EXCLUSIONS))
            .map(|i| self.exclusions.get(&i, 0).map_err(map_error(EXCLUSIONS)))
            .collect::<Result<_, _>>()?;
        Ok(InForce { word, exclusions })
    }

    /// Puts back what [`PolicyTables::in_force`] read: the same exclusions, and the same policy
    /// slot (untouched since, as publishing writes the other one) under a new generation, so
    /// verdicts cached meanwhile are not trusted.
    pub(super) fn restore(&mut self, before: &InForce) -> Result<(), DatapathError> {
        self.set_exclusions(&before.exclusions)?;
        let slot = active_slot(before.word);
        self.switch(slot)
    }

    /// Publishes `policy` (or removes the policy with `None`) and waits until no program reads
    /// the previous one. Returns the new generation.
    pub(super) fn publish(
        &mut self,
        policy: Option<&CompiledPolicy>,
    ) -> Result<u32, DatapathError> {
        let slot = match policy {
            None => None,
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
                Some(slot)
            }
        };
        self.switch(slot)?;
        Ok(self.generation)
    }

    /// Makes `slot` live (or none) under the next generation, and waits until no program reads
    /// the previous word.
    fn switch(&mut self, slot: Option<u32>) -> Result<(), DatapathError> {
        self.generation = self.generation.wrapping_add(1) & GENERATION_MASK;
        self.active
            .set(0, active_word(slot, self.generation), 0)
            .map_err(map_error(POLICY_ACTIVE))?;
        self.live = slot;
        sys::wait_for_running_programs().map_err(|source| DatapathError::Syscall {
            call: "membarrier(MEMBARRIER_CMD_GLOBAL)",
            source,
        })?;
        Ok(())
    }

    /// Replaces the exclusion list. The count is written last, so a program never reads an
    /// entry that is not written yet.
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

/// The policy word and exclusions the programs used before a start changed them.
#[derive(Debug)]
pub struct InForce {
    word: u32,
    exclusions: Vec<Rule>,
}
