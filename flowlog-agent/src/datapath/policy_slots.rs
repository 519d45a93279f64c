//! Loading policies and exclusions into the kernel tables.
//!
//! A policy is written into the slot the programs do not use, then published by one store of
//! the `POLICY_ACTIVE` word (slot and a new generation). After an RCU grace period no program
//! still reads the old slot, so the next reload may overwrite it. Every packet therefore sees
//! either the whole old policy or the whole new one, and the new generation invalidates every
//! verdict cached under the old one.

use aya::maps::{
    Array, MapData,
    lpm_trie::{Key, LpmTrie},
};
use flowlog_common::{
    maps::{
        ACL_ACTIONS, ACL_RULES, EXCLUSION_COUNT, EXCLUSIONS, POLICY_ACTIVE, POLICY_CONFIG,
        RULE_PORTS, RULE_PREFIXES, RULE_WORDS, SG_RULES,
    },
    policy::{
        GENERATION_MASK, LEGACY_RULE_ENTRIES, MAX_EXCLUSIONS, PolicyConfig, PortKeyData,
        PrefixKeyData, Rule, RuleList, RuleWord, active_slot, active_word, word_generation,
    },
};

use super::{DatapathError, take_map};
use crate::{policy::CompiledPolicy, sys};

pub(super) struct PolicyTables {
    active: Array<MapData, u32>,
    configs: [Array<MapData, PolicyConfig>; 2],
    acl: [Array<MapData, Rule>; 2],
    sg: [Array<MapData, Rule>; 2],
    index: [SlotIndex; 2],
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
            index: [SlotIndex::take(ebpf, 0)?, SlotIndex::take(ebpf, 1)?],
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
                self.index[s].write(policy)?;
                // The rule arrays of the previous layout, for its programs while a start
                // replaces them (they cannot hold a larger policy; nothing else reads them).
                let legacy = LEGACY_RULE_ENTRIES as usize;
                if policy.acl_rules.len() <= legacy && policy.sg_rules.len() <= legacy {
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

/// The rule index of one slot (`flowlog_common::policy`, "The rule index").
struct SlotIndex {
    slot: usize,
    prefixes: LpmTrie<MapData, PrefixKeyData, RuleList>,
    ports: LpmTrie<MapData, PortKeyData, RuleList>,
    words: Array<MapData, RuleWord>,
    acl_actions: Array<MapData, u8>,
}

impl SlotIndex {
    fn take(ebpf: &mut aya::Ebpf, slot: usize) -> Result<Self, DatapathError> {
        Ok(Self {
            slot,
            prefixes: take_map(ebpf, RULE_PREFIXES[slot])?,
            ports: take_map(ebpf, RULE_PORTS[slot])?,
            words: take_map(ebpf, RULE_WORDS[slot])?,
            acl_actions: take_map(ebpf, ACL_ACTIONS[slot])?,
        })
    }

    /// Replaces the slot's index with `policy`'s (the programs do not read this slot).
    fn write(&mut self, policy: &CompiledPolicy) -> Result<(), DatapathError> {
        let s = self.slot;
        let index = &policy.index;
        clear(&mut self.prefixes, RULE_PREFIXES[s])?;
        clear(&mut self.ports, RULE_PORTS[s])?;
        for (i, word) in index.words.iter().enumerate() {
            self.words
                .set(i as u32, word, 0)
                .map_err(map_error(RULE_WORDS[s]))?;
        }
        for (i, rule) in policy.acl_rules.iter().enumerate() {
            self.acl_actions
                .set(i as u32, rule.action, 0)
                .map_err(map_error(ACL_ACTIONS[s]))?;
        }
        for (len, data, list) in &index.prefixes {
            self.prefixes
                .insert(&Key::new(*len, *data), list, 0)
                .map_err(map_error(RULE_PREFIXES[s]))?;
        }
        for (len, data, list) in &index.ports {
            self.ports
                .insert(&Key::new(*len, *data), list, 0)
                .map_err(map_error(RULE_PORTS[s]))?;
        }
        Ok(())
    }
}

/// Removes every entry of `trie` (the previous policy of a slot, maybe a previous agent's).
fn clear<K: aya::Pod>(
    trie: &mut LpmTrie<MapData, K, RuleList>,
    name: &'static str,
) -> Result<(), DatapathError> {
    let stale: Vec<Key<K>> = trie
        .keys()
        .collect::<Result<_, _>>()
        .map_err(map_error(name))?;
    for key in &stale {
        trie.remove(key).map_err(map_error(name))?;
    }
    Ok(())
}

/// The policy word and exclusions the programs used before a start changed them.
#[derive(Debug)]
pub struct InForce {
    word: u32,
    exclusions: Vec<Rule>,
}
