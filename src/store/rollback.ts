/**
 * Rollback: makes the live volume what it was at a snapshot's generation, in steps small enough
 * that the mount keeps answering between them, and that a killed daemon resumes where it stopped.
 * The state of a rollback in progress is `VolumeRecord.rollback` plus the `pending` table; every
 * step changes both in one transaction.
 *
 * 1. `beginRollback` records the rollback and starts a new generation: whatever changes from then
 *    on is born after `base`.
 * 2. `scanStep` lists in `pending`, a batch per transaction, every record with a version born or
 *    dead in (snapshot, base] (births, then dead list), so the cost follows the changes, not the
 *    volume. The volume still reads as before.
 * 3. `switchRollback` runs in the commit that takes every dirty page while writes wait: it lists
 *    what changed in (base, now], drops the orphans and turns to `apply`. From that commit on the
 *    volume reads as the snapshot, because a pending record reads as the snapshot's version
 *    (`RollbackOverlay`).
 * 4. `applyStep` sets back a batch of pending records per transaction. Each becomes a new version
 *    born now (versions.ts keeps the replaced ones for newer snapshots, so none is destroyed) and
 *    a block map entry shares the snapshot's block. A record the volume writes meanwhile is set
 *    back first, in the same transaction (`VersionWriter.settle`), so nothing written after the
 *    switch is ever undone. The last step clears the state.
 *
 * Must run inside a transaction callback of the store; the volume record is changed in place.
 */
import { UserError } from '../errors.js'
import {
  Table, birthPrefix, deadPrefix, decodeBirthKey, decodeDeadKey, decodePendingKey, inodeKey, nameOfKey,
  pendingInodePrefix, pendingKey, prefixRange, volumePrefix, bmapKey, type BmapValue
} from './keys.js'
import type { DirentRecord, InodeRecord, SnapshotRecord, VolumeRecord, XattrRecord } from './records.js'
import { SnapshotReader } from './snapshot-reader.js'
import type { Store } from './store.js'
import { VersionWriter } from './versions.js'

const EMPTY = Buffer.alloc(0)
/** Appended to a key, the smallest key after it. */
const NEXT = Buffer.from([0])

/** Starts rolling `volume` back to `snapshot` (the scan phase). */
export function beginRollback (store: Store, volume: VolumeRecord, snapshot: SnapshotRecord, now: number): void {
  if (volume.rollback !== undefined) throw new UserError(`a rollback to ${volume.rollback.name} is in progress`)
  volume.rollback = { name: snapshot.name, gen: snapshot.gen, base: volume.gen, phase: 'scan', done: 0, total: 0, started: now }
  volume.gen += 1
  store.volumes.putSync(volume.id, volume)
}

/** Lists up to `limit` more changed records in `pending`; true once the scan is complete. */
export function scanStep (store: Store, volume: VolumeRecord, limit: number): boolean {
  const state = rollbackOf(volume)
  let left = limit
  for (const index of ['births', 'deadlist'] as const) {
    if (index === 'births' && state.cursor?.index === 'deadlist') continue
    const db = index === 'births' ? store.births : store.deadlist
    const first = index === 'births' ? birthPrefix : deadPrefix
    const start = state.cursor?.index === index ? Buffer.concat([state.cursor.key, NEXT]) : first(volume.id, state.gen + 1)
    const keys = [...db.getKeys({ start, end: first(volume.id, state.base + 1), limit: left })] as Buffer[]
    for (const key of keys) listPending(store, index, key)
    left -= keys.length
    if (keys.length > 0) state.cursor = { index, key: Buffer.from(keys[keys.length - 1]) }
    if (left === 0) break
  }
  store.volumes.putSync(volume.id, volume)
  return left > 0
}

/**
 * Turns to the apply phase: lists what changed after `base`, drops the orphans (files unlinked
 * while open are gone from the snapshot, or linked in it). Run in the commit that takes every
 * dirty page, with writes held: from this commit on the volume reads as the snapshot.
 */
export function switchRollback (store: Store, volume: VolumeRecord): void {
  const state = rollbackOf(volume)
  const range = { start: birthPrefix(volume.id, state.base + 1), end: birthPrefix(volume.id, volume.gen + 1) }
  for (const key of store.births.getKeys(range)) listPending(store, 'births', key as Buffer)
  for (const key of store.deadlist.getKeys(range)) listPending(store, 'deadlist', key as Buffer)
  for (const key of [...store.orphans.getKeys(prefixRange(volumePrefix(volume.id)))]) store.orphans.removeSync(key as Buffer)
  state.phase = 'apply'
  state.cursor = undefined
  state.total = store.pending.getKeysCount(prefixRange(volumePrefix(volume.id)))
  store.volumes.putSync(volume.id, volume)
}

/** Sets back up to `limit` pending records; true once none is left and the rollback is over. */
export function applyStep (store: Store, volume: VolumeRecord, limit: number): boolean {
  const state = rollbackOf(volume)
  const writer = new VersionWriter(store, volume)
  const keys = [...store.pending.getKeys({ ...prefixRange(volumePrefix(volume.id)), limit })] as Buffer[]
  for (const key of keys) {
    const { table, headKey } = decodePendingKey(key)
    writer.settle(table, headKey)
  }
  state.done = Math.min(state.total, state.done + keys.length)
  const finished = keys.length < limit
  if (finished) delete volume.rollback
  writer.finish(volume, true)
  return finished
}

/** Records in `pending` (tests and `snapfs check`). */
export function pendingCount (store: Store, vol: number): number {
  return store.pending.getKeysCount(prefixRange(volumePrefix(vol)))
}

/**
 * What the live volume reads while a rollback is in the apply phase: for a pending record, the
 * snapshot's version (`{ value }`, value undefined when the snapshot has none); for any other,
 * undefined, meaning the head is right. Reads only.
 */
export class RollbackOverlay {
  readonly reader: SnapshotReader
  private readonly store: Store
  private readonly vol: number

  constructor (store: Store, vol: number, gen: number) {
    this.store = store
    this.vol = vol
    this.reader = new SnapshotReader(store, vol, gen)
  }

  inode (ino: number): { value: InodeRecord | undefined } | undefined {
    if (!this.pending(Table.Inode, inodeKey(this.vol, ino))) return undefined
    return { value: this.reader.inode(ino) }
  }

  block (ino: number, index: number): { value: BmapValue | undefined } | undefined {
    if (!this.pending(Table.Bmap, bmapKey(this.vol, ino, index))) return undefined
    return { value: this.reader.block(ino, index) }
  }

  /** Makes a directory's entries read from its heads (by name) what the snapshot has for each pending name. */
  dirents (ino: number, entries: Map<string, DirentRecord>): void {
    for (const name of this.pendingNames(Table.Dirent, ino)) {
      const old = this.reader.dirent(ino, name)
      if (old === undefined) entries.delete(name.toString('utf8'))
      else entries.set(name.toString('utf8'), old)
    }
  }

  /** The same for an inode's extended attributes (values by name). */
  xattrs (ino: number, attrs: Map<string, Buffer>): void {
    for (const name of this.pendingNames(Table.Xattr, ino)) {
      const old: XattrRecord | undefined = this.reader.xattr(ino, name)
      if (old === undefined) attrs.delete(name.toString('utf8'))
      else attrs.set(name.toString('utf8'), old.v)
    }
  }

  private pending (table: Table, headKey: Buffer): boolean {
    return this.store.pending.doesExist(pendingKey(table, headKey))
  }

  private pendingNames (table: Table, ino: number): Buffer[] {
    const names: Buffer[] = []
    for (const key of this.store.pending.getKeys(prefixRange(pendingInodePrefix(this.vol, table, ino)))) {
      names.push(Buffer.from(nameOfKey(decodePendingKey(key as Buffer).headKey)))
    }
    return names
  }
}

function rollbackOf (volume: VolumeRecord): NonNullable<VolumeRecord['rollback']> {
  if (volume.rollback === undefined) throw new Error(`volume ${volume.name} has no rollback in progress`)
  return volume.rollback
}

/** Lists the record of a births or dead-list key in `pending`. */
function listPending (store: Store, index: 'births' | 'deadlist', key: Buffer): void {
  const { table, headKey } = index === 'births' ? decodeBirthKey(key) : decodeDeadKey(key)
  store.pending.putSync(pendingKey(table, headKey), EMPTY)
}
