/**
 * Clones: a new volume that starts as a snapshot's content. The clone gets its own copy of every
 * record the snapshot sees (inodes, entries, xattrs, block maps), born in its generation 1, and
 * shares every data block with the snapshot through reference counts: no data is copied, and the
 * two volumes never see each other's writes. Because the copy holds its own references, a clone
 * does not depend on its origin snapshot; it keeps the link (`origin`) only so that deleting the
 * snapshot is refused until the clone is deleted or promoted, as in ZFS.
 *
 * The copy runs in steps of `limit` records, one transaction each, with a cursor in the clone's
 * volume record (`cloning`), so the origin's daemon resumes it after a crash. Order: for each
 * table, the heads the snapshot sees, then the history versions it sees whose record has no head.
 * Deleting a volume (a clone no longer wanted) removes its records the same way, in steps.
 */
import { UserError } from '../errors.js'
import { Table, birthKey, blockKey, decodeBmap, decodeCount, decodeHistoryKey, decodeInodeKey, encodeBmap, encodeCount, prefixRange, sectorsOf, volumePrefix, withVolume } from './keys.js'
import type { HistoryRecord, SnapshotRecord, VolumeRecord } from './records.js'
import { newVolume, type Store } from './store.js'
import { SnapshotReader } from './snapshot-reader.js'
import { releaseBlock } from './versions.js'
import type { Database } from 'lmdb'

const EMPTY = Buffer.alloc(0)
const TABLES = [Table.Inode, Table.Dirent, Table.Xattr, Table.Bmap]
/** Two phases per table: heads, then history. */
const PHASES = TABLES.length * 2

/** Creates the clone's volume record (empty, `cloning`); the steps fill it. */
export function beginClone (store: Store, origin: VolumeRecord, snapshot: SnapshotRecord, name: string, now: number): VolumeRecord {
  checkVolumeName(name)
  if (store.meta.get('volume:' + name) !== undefined) throw new UserError(`a volume named "${name}" already exists`)
  let id = 1
  for (const key of store.volumes.getKeys()) id = Math.max(id, (key as number) + 1)
  const clone: VolumeRecord = {
    ...newVolume(id, name, now),
    nextIno: origin.nextIno,
    origin: { volume: origin.id, snapshot: snapshot.name, gen: snapshot.gen },
    cloning: { phase: 0 }
  }
  store.meta.putSync('volume:' + name, id)
  store.volumes.putSync(id, clone)
  return clone
}

/** Refuses a volume name that cannot name a lock file or a mount option. */
export function checkVolumeName (name: string): void {
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/.test(name)) {
    throw new UserError(`invalid volume name "${name}": letters, digits, ".", "_" and "-", at most 128, not starting with a punctuation mark`)
  }
}

/**
 * Copies up to `limit` records into the clone `id`; returns the clone's record, without
 * `cloning` once the copy is complete.
 */
export function cloneStep (store: Store, id: number, limit: number): VolumeRecord {
  const clone = store.volumes.get(id)
  if (clone?.cloning === undefined || clone.origin === undefined) throw new UserError(`volume ${id} is not being cloned`)
  const reader = new SnapshotReader(store, clone.origin.volume, clone.origin.gen)
  let { phase, key: cursor } = clone.cloning
  let copied = 0
  while (phase < PHASES && copied < limit) {
    const table = TABLES[Math.floor(phase / 2)]
    const db = store.headsOf(table)
    const heads = phase % 2 === 0
    const prefix = heads ? volumePrefix(clone.origin.volume) : Buffer.concat([Buffer.from([table]), volumePrefix(clone.origin.volume)])
    const range = prefixRange(prefix)
    const start = cursor === undefined ? range.start : Buffer.concat([cursor, Buffer.from([0])])
    const source = heads ? db : store.history
    const wanted = limit - copied
    const keys = [...source.getKeys({ start, end: range.end, limit: wanted })] as Buffer[]
    for (const key of keys) {
      const headKey = heads ? key : decodeHistoryKey(key).headKey
      const raw = heads ? reader.encoded(table, key) : visibleOldVersion(store, db, key, clone.origin.gen)
      if (raw !== undefined && keeps(reader, table, headKey)) copy(store, clone, table, db, headKey, raw)
      copied++
    }
    if (keys.length < wanted) {
      phase++
      cursor = undefined
    } else cursor = keys[keys.length - 1]
  }
  if (phase < PHASES) clone.cloning = cursor === undefined ? { phase } : { phase, key: cursor }
  else delete clone.cloning
  store.volumes.putSync(clone.id, clone)
  return clone
}

/** The version a history entry holds, if the snapshot at `gen` sees it and its record has no head. */
function visibleOldVersion (store: Store, db: Database<any, Buffer>, key: Buffer, gen: number): Buffer | undefined {
  const { headKey, birth } = decodeHistoryKey(key)
  const version = store.history.get(key) as HistoryRecord
  if (birth > gen || version.d <= gen || db.getBinary(headKey) !== undefined) return undefined
  return Buffer.from(version.v)
}

/** Records of inodes the snapshot holds only because they were open (no name) are left behind. */
function keeps (reader: SnapshotReader, table: Table, headKey: Buffer): boolean {
  if (table === Table.Dirent) return true
  return (reader.inode(decodeInodeKey(headKey).ino)?.nlink ?? 0) > 0
}

function copy (store: Store, clone: VolumeRecord, table: Table, db: Database<any, Buffer>, headKey: Buffer, raw: Buffer): void {
  const key = withVolume(headKey, clone.id)
  if (table === Table.Bmap) {
    const map = decodeBmap(raw)
    const refKey = blockKey(map.block)
    const extra = store.refs.get(refKey)
    store.refs.putSync(refKey, encodeCount((extra === undefined ? 0 : decodeCount(extra)) + 1))
    store.bmap.putSync(key, encodeBmap({ ...map, birth: clone.gen }))
    clone.used += sectorsOf(map.length) * 512
    clone.written += sectorsOf(map.length) * 512
  } else {
    db.putSync(key, { ...store.decodeRecord<object>(db, raw), b: clone.gen })
  }
  store.births.putSync(birthKey(clone.id, clone.gen, table, key), EMPTY)
}

/** The clones made from snapshot `gen` of volume `vol` (and not promoted). */
export function clonesOf (store: Store, vol: number, gen: number): string[] {
  return [...store.volumes.getRange()].map(({ value }) => value)
    .filter(v => v.origin?.volume === vol && v.origin.gen === gen).map(v => v.name)
}

/** Detaches a clone from its origin snapshot (which may then be deleted). */
export function promote (store: Store, name: string): VolumeRecord {
  const volume = store.volume(name)
  if (volume.origin === undefined) throw new UserError(`volume ${name} is not a clone`)
  if (volume.cloning !== undefined) throw new UserError(`volume ${name} is still being cloned`)
  delete volume.origin
  store.volumes.putSync(volume.id, volume)
  return volume
}

/** Marks a volume for deletion (it can no longer be mounted); refuses one that has clones. */
export function beginVolumeDelete (store: Store, name: string): VolumeRecord {
  const volume = store.volume(name)
  const clones = [...store.volumes.getRange()].map(({ value }) => value).filter(v => v.origin?.volume === volume.id)
  if (clones.length > 0) throw new UserError(`volume ${name} has clones (${clones.map(c => c.name).join(', ')}); delete or promote them first`)
  volume.deleting = true
  store.volumes.putSync(volume.id, volume)
  return volume
}

/**
 * Removes up to `limit` records of a volume marked for deletion, releasing the blocks they
 * reference; returns true once the volume is gone.
 */
export function volumeDeleteStep (store: Store, id: number, limit: number): boolean {
  const volume = store.volumes.get(id)
  if (volume === undefined) return true
  const prefix = prefixRange(volumePrefix(id))
  let left = limit
  for (const table of TABLES) {
    const db = store.headsOf(table)
    for (const { key, value } of [...db.getRange({ ...prefix, limit: left })]) {
      if (table === Table.Bmap) releaseBlock(store, decodeBmap(value as Buffer).block)
      db.removeSync(key)
      left--
    }
    const history = prefixRange(Buffer.concat([Buffer.from([table]), volumePrefix(id)]))
    for (const { key, value } of [...store.history.getRange({ ...history, limit: left })]) {
      if (table === Table.Bmap) releaseBlock(store, decodeBmap((value as HistoryRecord).v).block)
      store.history.removeSync(key)
      left--
    }
    if (left <= 0) return false
  }
  for (const db of [store.deadlist, store.births, store.orphans] as Array<Database<any, Buffer>>) {
    for (const key of [...db.getKeys({ ...prefix, limit: left })]) {
      db.removeSync(key as Buffer)
      left--
    }
    if (left <= 0) return false
  }
  for (const key of [...store.snapshots.getKeys(prefix)]) store.snapshots.removeSync(key as Buffer)
  store.volumes.removeSync(id)
  store.meta.removeSync('volume:' + volume.name)
  return true
}
