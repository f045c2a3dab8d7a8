//! One namespace's revision log: its entries in revision order, and the
//! cursors that walk it.
//!
//! Entries live in an intrusive doubly linked list over a slab, ordered by
//! revision. A change gives the entry the next revision and moves it to the
//! tail, so both applying a heartbeat and sending one delta entry cost O(1),
//! whatever the size of the list.
//!
//! A browser's cursor is its last revision plus a *pin* on the last node it
//! visited, so the next walk starts at `pin.next` without a search. A pinned
//! node that has to move (its entry changed, or its tombstone is pruned)
//! leaves a *ghost* behind: a data-less placeholder that keeps the pinning
//! cursors' place and is freed when the last pin goes. Ghosts are bounded by
//! the number of browsers, each of which pins at most one node.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use slab::Slab;

use crate::frame::{Frame, Upsert};

const NIL: usize = usize::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Live,
    Tombstone,
    Ghost,
}

#[derive(Debug)]
struct Node {
    rev: u64,
    prev: usize,
    next: usize,
    key: SocketAddr,
    kind: Kind,
    port_declared: bool,
    pins: u32,
    blob: Bytes,
    /// When this version of the entry was published.
    changed: Instant,
    /// Whether a browser has been sent this version.
    sent: bool,
}

/// A browser's position in a [`Log`]: O(1) in size, however far behind it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cursor {
    /// Every change up to this revision has been sent.
    pub(crate) rev: u64,
    /// Tombstones up to this revision predate the browser's snapshot: skipped.
    pub(crate) skip_tombstones_upto: u64,
    /// The last node visited, pinned in place; NIL before the first walk.
    pin: usize,
}

impl Cursor {
    /// A cursor for a browser whose list is empty, starting a snapshot of a log
    /// whose newest revision is `snapshot_rev`.
    pub(crate) fn fresh(snapshot_rev: u64) -> Self {
        Cursor { rev: 0, skip_tombstones_upto: snapshot_rev, pin: NIL }
    }

    pub(crate) fn is_pinned(&self) -> bool {
        self.pin != NIL
    }

    /// A cursor for a browser that already holds every change up to `rev`.
    pub(crate) fn resume(rev: u64) -> Self {
        Cursor { rev, skip_tombstones_upto: 0, pin: NIL }
    }
}

/// What [`Log::upsert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Upserted {
    /// A new entry, or a tombstone revived.
    Inserted,
    /// The entry's blob or port flag changed.
    Updated,
    /// Like `Updated`, and no browser had been sent the replaced version:
    /// the log coalesced it away.
    Superseded,
    /// Same blob as before: no new revision, nothing to send.
    Unchanged,
}

#[derive(Debug, Default)]
pub(crate) struct Log {
    nodes: Slab<Node>,
    head: usize,
    tail: usize,
    /// Key → slot of its live entry or tombstone.
    index: HashMap<SocketAddr, usize>,
    /// (revision, slot) of tombstones, oldest first; entries whose slot no
    /// longer holds that tombstone are stale and skipped.
    tombstone_queue: VecDeque<(u64, usize)>,
    live: usize,
    tombstones: usize,
    ghosts: usize,
    /// Newest revision in this log.
    last_rev: u64,
    /// Cursors below this revision may have missed a pruned tombstone.
    floor: u64,
    /// Upsert and Remove frames written by `walk`, ever.
    frames_sent: u64,
}

impl Log {
    pub(crate) fn new(created_at_rev: u64) -> Self {
        Log { head: NIL, tail: NIL, last_rev: created_at_rev, floor: created_at_rev, ..Log::default() }
    }

    pub(crate) fn last_rev(&self) -> u64 {
        self.last_rev
    }

    pub(crate) fn floor(&self) -> u64 {
        self.floor
    }

    pub(crate) fn live(&self) -> usize {
        self.live
    }

    pub(crate) fn tombstones(&self) -> usize {
        self.tombstones
    }

    pub(crate) fn ghosts(&self) -> usize {
        self.ghosts
    }

    /// Live entries in revision order.
    pub(crate) fn entries(&self) -> impl Iterator<Item = (u64, SocketAddr, bool, &Bytes)> + '_ {
        let mut pos = self.head;
        std::iter::from_fn(move || loop {
            let node = self.nodes.get(pos)?;
            pos = node.next;
            if node.kind == Kind::Live {
                return Some((node.rev, node.key, node.port_declared, &node.blob));
            }
        })
    }

    /// Live entries in revision order, with the time each version was published.
    pub(crate) fn entries_changed(&self) -> impl Iterator<Item = (u64, SocketAddr, bool, &Bytes, Instant)> + '_ {
        let mut pos = self.head;
        std::iter::from_fn(move || loop {
            let node = self.nodes.get(pos)?;
            pos = node.next;
            if node.kind == Kind::Live {
                return Some((node.rev, node.key, node.port_declared, &node.blob, node.changed));
            }
        })
    }

    /// Upsert and Remove frames written by [`Log::walk`] since the log was created.
    pub(crate) fn frames_sent(&self) -> u64 {
        self.frames_sent
    }

    /// Sets the entry for `key`, published at `now`, taking the next
    /// revision from `revision` if it changed.
    pub(crate) fn upsert(
        &mut self,
        key: SocketAddr,
        blob: &[u8],
        port_declared: bool,
        now: Instant,
        revision: &mut u64,
    ) -> Upserted {
        let Some(&slot) = self.index.get(&key) else {
            *revision += 1;
            let node = Node {
                rev: *revision,
                prev: NIL,
                next: NIL,
                key,
                kind: Kind::Live,
                port_declared,
                pins: 0,
                blob: Bytes::copy_from_slice(blob),
                changed: now,
                sent: false,
            };
            let slot = self.nodes.insert(node);
            self.link_tail(slot);
            self.index.insert(key, slot);
            self.live += 1;
            self.last_rev = *revision;
            return Upserted::Inserted;
        };
        let Some(node) = self.nodes.get_mut(slot) else {
            return Upserted::Unchanged;
        };
        let outcome = match node.kind {
            Kind::Live if node.port_declared == port_declared && node.blob == blob => return Upserted::Unchanged,
            Kind::Live if node.sent => Upserted::Updated,
            Kind::Live => Upserted::Superseded,
            Kind::Tombstone => {
                self.tombstones -= 1;
                self.live += 1;
                Upserted::Inserted
            }
            Kind::Ghost => return Upserted::Unchanged, // the index never points at ghosts
        };
        node.kind = Kind::Live;
        node.port_declared = port_declared;
        node.blob = Bytes::copy_from_slice(blob);
        node.changed = now;
        node.sent = false;
        *revision += 1;
        self.move_to_tail(slot, *revision);
        outcome
    }

    /// Turns the live entry for `key` into a tombstone, then prunes the oldest
    /// tombstones beyond `max_tombstones`. Returns whether an entry was removed.
    pub(crate) fn remove(&mut self, key: &SocketAddr, revision: &mut u64, max_tombstones: usize) -> bool {
        let Some(&slot) = self.index.get(key) else { return false };
        let Some(node) = self.nodes.get_mut(slot) else { return false };
        if node.kind != Kind::Live {
            return false;
        }
        node.kind = Kind::Tombstone;
        node.blob = Bytes::new();
        self.live -= 1;
        self.tombstones += 1;
        *revision += 1;
        let slot = self.move_to_tail(slot, *revision);
        self.tombstone_queue.push_back((*revision, slot));
        self.prune_tombstones(max_tombstones);
        true
    }

    fn prune_tombstones(&mut self, max: usize) {
        while self.tombstones > max {
            let Some((rev, slot)) = self.tombstone_queue.pop_front() else { break };
            let Some(node) = self.nodes.get_mut(slot) else { continue };
            if node.kind != Kind::Tombstone || node.rev != rev {
                continue; // revived or moved since it was queued
            }
            self.floor = self.floor.max(rev);
            self.tombstones -= 1;
            self.index.remove(&node.key);
            if node.pins > 0 {
                node.kind = Kind::Ghost;
                self.ghosts += 1;
            } else {
                self.unlink(slot);
                self.nodes.remove(slot);
            }
        }
        // Revived tombstones leave stale queue items behind; keep them bounded.
        if self.tombstone_queue.len() > 2 * self.tombstones + 64 {
            let nodes = &self.nodes;
            self.tombstone_queue
                .retain(|&(rev, slot)| nodes.get(slot).is_some_and(|n| n.kind == Kind::Tombstone && n.rev == rev));
        }
    }

    /// Gives `slot` revision `rev` at the tail. A pinned node stays as a ghost
    /// and its data moves to a new node. Returns the data's slot.
    fn move_to_tail(&mut self, slot: usize, rev: u64) -> usize {
        self.last_rev = rev;
        let Some(node) = self.nodes.get_mut(slot) else { return slot };
        if node.pins == 0 {
            node.rev = rev;
            self.unlink(slot);
            self.link_tail(slot);
            return slot;
        }
        let moved = Node {
            rev,
            prev: NIL,
            next: NIL,
            key: node.key,
            kind: node.kind,
            port_declared: node.port_declared,
            pins: 0,
            blob: std::mem::take(&mut node.blob),
            changed: node.changed,
            sent: node.sent,
        };
        node.kind = Kind::Ghost;
        self.ghosts += 1;
        let key = moved.key;
        let new_slot = self.nodes.insert(moved);
        self.link_tail(new_slot);
        self.index.insert(key, new_slot);
        new_slot
    }

    fn link_tail(&mut self, slot: usize) {
        let old_tail = self.tail;
        if let Some(node) = self.nodes.get_mut(slot) {
            node.prev = old_tail;
            node.next = NIL;
        }
        match self.nodes.get_mut(old_tail) {
            Some(tail) => tail.next = slot,
            None => self.head = slot,
        }
        self.tail = slot;
    }

    fn unlink(&mut self, slot: usize) {
        let Some(node) = self.nodes.get(slot) else { return };
        let (prev, next) = (node.prev, node.next);
        match self.nodes.get_mut(prev) {
            Some(p) => p.next = next,
            None => self.head = next,
        }
        match self.nodes.get_mut(next) {
            Some(n) => n.prev = prev,
            None => self.tail = prev,
        }
    }

    /// Releases a cursor's pin, freeing the ghost it may have kept.
    pub(crate) fn release(&mut self, cursor: &mut Cursor) {
        let slot = std::mem::replace(&mut cursor.pin, NIL);
        let Some(node) = self.nodes.get_mut(slot) else { return };
        node.pins -= 1;
        if node.pins == 0 && node.kind == Kind::Ghost {
            self.ghosts -= 1;
            self.unlink(slot);
            self.nodes.remove(slot);
        }
    }

    /// First node with a revision above `rev`, walking back from the tail:
    /// O(number of such nodes), which is what the caller sends next anyway.
    fn first_after(&self, rev: u64) -> usize {
        let mut pos = self.tail;
        let mut first = NIL;
        while let Some(node) = self.nodes.get(pos) {
            if node.rev <= rev {
                break;
            }
            first = pos;
            pos = node.prev;
        }
        first
    }

    /// Appends Upsert/Remove frames for the changes after `cursor` up to
    /// `target`, in revision order, until `buf` reaches `limit` bytes.
    /// Returns true once the cursor has reached `target`.
    pub(crate) fn walk(&mut self, cursor: &mut Cursor, target: u64, buf: &mut Vec<u8>, limit: usize) -> bool {
        let mut pos = match self.nodes.get(cursor.pin) {
            Some(pinned) => pinned.next,
            None if cursor.rev == 0 => self.head,
            None => self.first_after(cursor.rev),
        };
        let mut last = NIL;
        let done = loop {
            let Some(node) = self.nodes.get_mut(pos) else { break true };
            if node.rev > target {
                break true;
            }
            match node.kind {
                Kind::Live => {
                    Frame::Upsert(Upsert {
                        revision: node.rev,
                        address: node.key,
                        port_declared: node.port_declared,
                        blob: &node.blob,
                    })
                    .encode(buf);
                    node.sent = true;
                    self.frames_sent += 1;
                }
                Kind::Tombstone if node.rev > cursor.skip_tombstones_upto => {
                    Frame::Remove { revision: node.rev, address: node.key }.encode(buf);
                    self.frames_sent += 1;
                }
                Kind::Tombstone | Kind::Ghost => {}
            }
            cursor.rev = node.rev;
            last = pos;
            pos = node.next;
            if buf.len() >= limit {
                break self.nodes.get(pos).is_none_or(|next| next.rev > target);
            }
        };
        if let Some(node) = self.nodes.get_mut(last) {
            node.pins += 1;
            self.release(cursor);
            cursor.pin = last;
        }
        if done {
            cursor.rev = cursor.rev.max(target);
        }
        done
    }

    /// Nodes held, of every kind: bounded by live + max tombstones + cursors.
    pub(crate) fn nodes(&self) -> usize {
        self.nodes.len()
    }

    /// Checks every structural invariant; used by tests and fuzz targets.
    pub(crate) fn check(&self, pins_expected: u64) -> Result<(), String> {
        let (mut live, mut tombstones, mut ghosts, mut pins, mut count) = (0, 0, 0, 0u64, 0);
        let (mut prev, mut pos, mut prev_rev) = (NIL, self.head, 0u64);
        while let Some(node) = self.nodes.get(pos) {
            count += 1;
            if count > self.nodes.len() {
                return Err("revision list has a cycle".into());
            }
            if node.prev != prev {
                return Err(format!("node {pos}: prev link {} != {prev}", node.prev));
            }
            if node.rev <= prev_rev && prev != NIL {
                return Err(format!("revisions out of order: {} after {prev_rev}", node.rev));
            }
            if node.rev > self.last_rev {
                return Err(format!("revision {} above last_rev {}", node.rev, self.last_rev));
            }
            match node.kind {
                Kind::Live | Kind::Tombstone => {
                    if self.index.get(&node.key) != Some(&pos) {
                        return Err(format!("{} not indexed at its node", node.key));
                    }
                    if node.kind == Kind::Live {
                        live += 1;
                    } else {
                        tombstones += 1;
                        if !node.blob.is_empty() {
                            return Err("tombstone holds a blob".into());
                        }
                    }
                }
                Kind::Ghost => {
                    ghosts += 1;
                    if node.pins == 0 {
                        return Err("unpinned ghost".into());
                    }
                }
            }
            pins += u64::from(node.pins);
            prev_rev = node.rev;
            prev = pos;
            pos = node.next;
        }
        if prev != self.tail {
            return Err("tail does not end the list".into());
        }
        if count != self.nodes.len() {
            return Err(format!("{} nodes reachable of {}", count, self.nodes.len()));
        }
        if (live, tombstones, ghosts) != (self.live, self.tombstones, self.ghosts) {
            return Err(format!(
                "counts (live, tombstones, ghosts) = {:?}, recorded {:?}",
                (live, tombstones, ghosts),
                (self.live, self.tombstones, self.ghosts)
            ));
        }
        if self.index.len() != live + tombstones {
            return Err("index holds keys without nodes".into());
        }
        if pins != pins_expected {
            return Err(format!("{pins} pins held, cursors account for {pins_expected}"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    fn walk_all(log: &mut Log, cursor: &mut Cursor) -> Vec<String> {
        let mut buf = Vec::new();
        let target = log.last_rev();
        loop {
            let limit = buf.len() + 1;
            if log.walk(cursor, target, &mut buf, limit) {
                break;
            }
        }
        let mut out = Vec::new();
        let mut decoder = crate::FrameDecoder::new(1 << 20);
        decoder
            .decode(&buf, |f| {
                out.push(match f {
                    Frame::Upsert(u) => format!("+{}@{}", u.address.port(), u.revision),
                    Frame::Remove { address, revision } => format!("-{}@{revision}", address.port()),
                    other => format!("{other:?}"),
                });
                Ok::<_, crate::DecodeError>(())
            })
            .unwrap();
        out
    }

    #[test]
    fn changes_move_to_tail_and_coalesce() {
        let mut log = Log::new(0);
        let mut rev = 0;
        for port in 1..=3 {
            assert_eq!(log.upsert(addr(port), b"a", false, Instant::now(), &mut rev), Upserted::Inserted);
        }
        assert_eq!(log.upsert(addr(1), b"a", false, Instant::now(), &mut rev), Upserted::Unchanged);
        assert_eq!(rev, 3);
        let mut cursor = Cursor::fresh(log.last_rev());
        assert_eq!(walk_all(&mut log, &mut cursor), ["+1@1", "+2@2", "+3@3"]);
        for i in 0..10u8 {
            log.upsert(addr(2), &[i], false, Instant::now(), &mut rev);
        }
        assert!(log.remove(&addr(3), &mut rev, 100));
        assert_eq!(walk_all(&mut log, &mut cursor), ["+2@13", "-3@14"]);
        log.check(1).unwrap();
        log.release(&mut cursor);
        log.check(0).unwrap();
    }

    #[test]
    fn pinned_node_leaves_a_ghost_that_its_cursor_frees() {
        let mut log = Log::new(0);
        let mut rev = 0;
        log.upsert(addr(1), b"a", false, Instant::now(), &mut rev);
        log.upsert(addr(2), b"a", false, Instant::now(), &mut rev);
        let mut cursor = Cursor::fresh(0);
        let mut buf = Vec::new();
        assert!(!log.walk(&mut cursor, 2, &mut buf, 1)); // stops after the first entry
        log.upsert(addr(1), b"b", false, Instant::now(), &mut rev); // the pinned node moves
        assert_eq!(log.ghosts(), 1);
        log.check(1).unwrap();
        assert_eq!(walk_all(&mut log, &mut cursor), ["+2@2", "+1@3"]);
        assert_eq!(log.ghosts(), 0);
        log.check(1).unwrap();
    }

    #[test]
    fn pruning_tombstones_raises_the_floor() {
        let mut log = Log::new(0);
        let mut rev = 0;
        for port in 1..=5 {
            log.upsert(addr(port), b"x", false, Instant::now(), &mut rev);
        }
        for port in 1..=5 {
            log.remove(&addr(port), &mut rev, 2);
        }
        assert_eq!(log.tombstones(), 2);
        assert_eq!(log.floor(), 8); // tombstones at 6, 7 and 8 were pruned
        let mut resumed = Cursor::resume(8);
        assert_eq!(walk_all(&mut log, &mut resumed), ["-4@9", "-5@10"]);
        log.check(1).unwrap();
    }

    #[test]
    fn resume_walks_back_from_the_tail() {
        let mut log = Log::new(0);
        let mut rev = 0;
        for port in 1..=100 {
            log.upsert(addr(port), b"x", false, Instant::now(), &mut rev);
        }
        let mut cursor = Cursor::resume(98);
        assert_eq!(walk_all(&mut log, &mut cursor), ["+99@99", "+100@100"]);
    }
}
