/**
 * The snapshot catalogue of a volume, and the transactions that change which snapshots exist.
 * A snapshot is only a record {name, gen}: freezing one bumps the volume's generation, so every
 * version the volume had at that instant stays readable (versions.ts keeps it on overwrite).
 *
 * - `freezeSnapshot` records the current generation and starts the next one: O(1), whatever the
 *   size of the volume. It runs in the transaction that commits the last dirty data, so the
 *   snapshot holds every change made before it.
 * - `markDeleting` hides a snapshot; `deleteStep` then walks the dead list for deaths in
 *   (gen, next] and frees, a batch per transaction, the versions born after the previous snapshot:
 *   those only this snapshot could see. Versions the previous snapshot sees stay. A step is
 *   resumable: the record keeps its cursor, so a daemon killed mid-delete finishes it later.
 * - `usedBytes` is the same walk without freeing: what deleting the snapshot would free.
 *
 * Every function that writes must run inside a transaction callback of the store; the volume
 * record passed in is the live one and is changed in place (the caller restores it if the
 * transaction fails).
 */
import { UserError } from '../errors.js'
import { Table, birthKey, deadPrefix, decodeBmap, decodeDeadKey, historyKey, prefixRange, sectorsOf, snapshotKey, volumePrefix, NAME_MAX, blockKey } from './keys.js'
import type { HistoryRecord, SnapshotRecord, VolumeRecord } from './records.js'
import type { Store } from './store.js'
import { releaseBlock } from './versions.js'
import { clonesOf } from './clone.js'

/** Refuses a name that cannot be a directory entry under `.snapshots/`. */
export function checkSnapshotName (name: string): void {
  if (name.length === 0) throw new UserError('invalid snapshot name: it is empty')
  if (name === '.' || name === '..') throw new UserError(`invalid snapshot name "${name}"`)
  if (name.includes('/') || name.includes('\0')) throw new UserError(`invalid snapshot name "${name}": it contains "/" or a NUL byte`)
  if (Buffer.byteLength(name) > NAME_MAX) throw new UserError(`invalid snapshot name: ${Buffer.byteLength(name)} bytes is too long (at most ${NAME_MAX})`)
}

/** The snapshots of a volume, oldest first. */
export function snapshotsOf (store: Store, vol: number): SnapshotRecord[] {
  return [...store.snapshots.getRange(prefixRange(volumePrefix(vol)))].map(({ value }) => value)
}

/** The snapshot called `name`, or a UserError. */
export function findSnapshot (store: Store, vol: number, name: string): SnapshotRecord {
  const found = snapshotsOf(store, vol).find(s => s.name === name)
  if (found === undefined) throw new UserError(`no snapshot "${name}"`)
  return found
}

/**
 * The generations around snapshot `gen`: the previous snapshot's (0 when none) and the next
 * one's (the volume's current generation when it is the newest).
 */
function neighbours (list: SnapshotRecord[], gen: number, volume: VolumeRecord): { prev: number, next: number } {
  let prev = 0
  let next = volume.gen
  for (const s of list) {
    if (s.gen < gen) prev = s.gen
    else if (s.gen > gen) {
      next = s.gen
      break
    }
  }
  return { prev, next }
}

/** Bytes the data version of a dead-list entry holds, or 0 for metadata or shared blocks. */
function exclusiveBytes (store: Store, table: Table, headKey: Buffer, birth: number): number {
  if (table !== Table.Bmap) return 0
  const version = store.history.get(historyKey(table, headKey, birth)) as HistoryRecord | undefined
  if (version === undefined) return 0
  const map = decodeBmap(version.v)
  if (store.refs.get(blockKey(map.block)) !== undefined) return 0
  return sectorsOf(map.length) * 512
}

/** What deleting `snapshot` would free, in bytes (reads only). */
export function usedBytes (store: Store, volume: VolumeRecord, snapshot: SnapshotRecord, list = snapshotsOf(store, volume.id)): number {
  const { prev, next } = neighbours(list, snapshot.gen, volume)
  let bytes = 0
  for (const key of store.deadlist.getKeys({ start: deadPrefix(volume.id, snapshot.gen + 1), end: deadPrefix(volume.id, next + 1) })) {
    const { table, headKey, birth } = decodeDeadKey(key as Buffer)
    if (birth > prev) bytes += exclusiveBytes(store, table, headKey, birth)
  }
  return bytes
}

export interface FreezeRequest {
  name: string
  description: string
  now: number
}

/**
 * Records a snapshot of the volume as it is in this transaction and starts a new generation.
 * Refuses a bad or taken name and a reached quota without changing anything.
 */
export function freezeSnapshot (store: Store, volume: VolumeRecord, request: FreezeRequest): SnapshotRecord {
  checkSnapshotName(request.name)
  const list = snapshotsOf(store, volume.id)
  if (list.some(s => s.name === request.name)) throw new UserError(`a snapshot named "${request.name}" already exists`)
  checkQuota(volume, list)
  const id = (store.meta.get('nextSnapshotId') as number | undefined) ?? 1
  store.meta.putSync('nextSnapshotId', id + 1)
  const record: SnapshotRecord = {
    id,
    name: request.name,
    description: request.description,
    created: request.now,
    gen: volume.gen,
    status: 'ready',
    refer: volume.used,
    written: volume.written
  }
  store.snapshots.putSync(snapshotKey(volume.id, volume.gen), record)
  volume.lastSnapGen = volume.gen
  volume.gen += 1
  volume.written = 0
  store.volumes.putSync(volume.id, volume)
  return record
}

/** Refuses a new snapshot when the volume's snapshot quota is reached. */
export function checkQuota (volume: VolumeRecord, list: SnapshotRecord[]): void {
  const count = list.filter(s => s.status === 'ready').length
  if (volume.maxSnapshots !== null && count >= volume.maxSnapshots) {
    throw new UserError(`snapshot quota reached: volume ${volume.name} has ${count} snapshots, the limit is ${volume.maxSnapshots}`)
  }
  if (volume.maxSnapshotBytes !== null && volume.snapshotBytes >= volume.maxSnapshotBytes) {
    throw new UserError(`snapshot space quota reached: snapshots of volume ${volume.name} hold ${volume.snapshotBytes} bytes, the limit is ${volume.maxSnapshotBytes}`)
  }
}

/** Hides a snapshot and records where its delete starts; returns the updated record. */
export function markDeleting (store: Store, volume: VolumeRecord, name: string): SnapshotRecord {
  const list = snapshotsOf(store, volume.id)
  const record = findSnapshot(store, volume.id, name)
  if (record.status === 'deleting') return record
  const clones = clonesOf(store, volume.id, record.gen)
  if (clones.length > 0) throw new UserError(`snapshot ${name} has clones (${clones.join(', ')}); delete or promote them first`)
  const { next } = neighbours(list, record.gen, volume)
  const total = store.deadlist.getKeysCount({ start: deadPrefix(volume.id, record.gen + 1), end: deadPrefix(volume.id, next + 1) })
  const marked: SnapshotRecord = { ...record, status: 'deleting', done: 0, total, freed: 0, deleteGen: volume.gen }
  store.snapshots.putSync(snapshotKey(volume.id, record.gen), marked)
  return marked
}

/**
 * Frees up to `limit` dead-list entries of the deleting snapshot at `gen`. Returns its record as
 * it now stands (with `freed` bytes so far) and whether the snapshot is gone; null if there was no
 * such snapshot.
 */
export function deleteStep (store: Store, volume: VolumeRecord, gen: number, limit: number): { record: SnapshotRecord, finished: boolean } | null {
  const list = snapshotsOf(store, volume.id)
  const record = list.find(s => s.gen === gen)
  if (record === undefined) return null
  const { prev, next } = neighbours(list, gen, volume)
  const start = record.cursor === undefined ? deadPrefix(volume.id, gen + 1) : Buffer.concat([record.cursor, Buffer.from([0])])
  const keys = [...store.deadlist.getKeys({ start, end: deadPrefix(volume.id, next + 1), limit })] as Buffer[]
  const updated: SnapshotRecord = { ...record, done: (record.done ?? 0) + keys.length }
  for (const key of keys) freeIfYounger(store, volume, key, prev, updated)
  if (keys.length === limit) {
    updated.cursor = keys[keys.length - 1]
    store.snapshots.putSync(snapshotKey(volume.id, gen), updated)
    store.volumes.putSync(volume.id, volume)
    return { record: updated, finished: false }
  }
  // Versions that died while the delete ran were listed at the generation it began in, possibly
  // behind the cursor: free those too, in this last transaction.
  const deleteGen = record.deleteGen ?? volume.gen
  if (deleteGen <= next) {
    for (const key of [...store.deadlist.getKeys({ start: deadPrefix(volume.id, deleteGen), end: deadPrefix(volume.id, deleteGen + 1) })] as Buffer[]) {
      freeIfYounger(store, volume, key, prev, updated)
    }
  }
  store.snapshots.removeSync(snapshotKey(volume.id, gen))
  // The data this snapshot wrote and a later state still holds becomes part of what came next.
  const carried = record.written - (updated.dropped ?? 0)
  const following = list.find(s => s.gen === next)
  if (following !== undefined) {
    store.snapshots.putSync(snapshotKey(volume.id, next), { ...following, written: following.written + carried })
  } else {
    volume.lastSnapGen = prev
    volume.written += carried
  }
  store.volumes.putSync(volume.id, volume)
  return { record: updated, finished: true }
}

/**
 * Drops the version of a dead-list entry if it was born after `prev`, counting in `record` the
 * bytes freed (blocks no one else references) and the bytes of data versions dropped.
 */
function freeIfYounger (store: Store, volume: VolumeRecord, key: Buffer, prev: number, record: SnapshotRecord): void {
  const { table, headKey, birth } = decodeDeadKey(key)
  if (birth <= prev) return
  record.freed = (record.freed ?? 0) + exclusiveBytes(store, table, headKey, birth)
  const hkey = historyKey(table, headKey, birth)
  const version = store.history.get(hkey) as HistoryRecord | undefined
  if (table === Table.Bmap && version !== undefined) {
    const map = decodeBmap(version.v)
    releaseBlock(store, map.block)
    volume.snapshotBytes -= sectorsOf(map.length) * 512
    record.dropped = (record.dropped ?? 0) + sectorsOf(map.length) * 512
  }
  store.history.removeSync(hkey)
  store.deadlist.removeSync(key)
  store.births.removeSync(birthKey(volume.id, birth, table, headKey))
}

/** Sets the volume's snapshot quotas (null lifts one). */
export function setQuota (store: Store, volume: VolumeRecord, quota: { maxSnapshots?: number | null, maxSnapshotBytes?: number | null }): void {
  if (quota.maxSnapshots !== undefined) volume.maxSnapshots = quota.maxSnapshots
  if (quota.maxSnapshotBytes !== undefined) volume.maxSnapshotBytes = quota.maxSnapshotBytes
  store.volumes.putSync(volume.id, volume)
}
