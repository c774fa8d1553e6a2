/**
 * `snapfs check`: verifies, by a full scan, every invariant the store relies on, and reports each
 * violation as one line. It reads only; run it on a store no daemon is writing.
 *
 * Checked: the format record; per volume, that the root exists, every entry points to an existing
 * inode of the type it records, link counts equal the entries that name each inode (orphans
 * excepted), block maps point to existing blocks within the file's size, and each inode's
 * allocated sectors equal its blocks; for the whole store, that each block's reference count is
 * what the block maps (heads and history) hold, that no block is unreferenced, that every history
 * version is in the dead list, and that the id counters are past every id in use. Snapshots
 * (versions.ts, snapshots.ts): the catalogue (unique names, generations behind the volume's, the
 * latest one recorded), the version chains (per record, versions' lifetimes never overlap and
 * every old version is seen by some snapshot), the dead list and births index against the
 * versions they list, and the space accounting (used, written, held by snapshots, each
 * snapshot's refer and written) against a full scan. A volume in the middle of a rollback
 * (rollback.ts) is checked as it reads: its pending records as the snapshot's versions; reference
 * counts and accounting follow the heads as stored. Every pending record belongs to a volume
 * with a rollback in progress.
 */
import { Table, type BmapValue, birthKey, deadKey, decodeBirthKey, decodeSnapshotKey, decodeBlockKey, decodeBmap, decodeCount, decodeDeadKey, decodeHistoryKey, decodeInodeKey, decodePendingKey, historyKey, indexOfBmapKey, inodeKey, nameOfKey, pendingKey, sectorsOf } from './keys.js'
import { ROOT_INO, type DirentRecord, type InodeRecord, type HistoryRecord, type SnapshotRecord, type VolumeRecord } from './records.js'
import type { Store } from './store.js'
import { RollbackOverlay } from './rollback.js'

export interface CheckReport {
  problems: string[]
  inodes: number
  dirents: number
  blocks: number
  snapshots: number
  /** Old versions kept for snapshots. */
  versions: number
  /** Work a daemon stopped in the middle of, and takes up at the next mount: one line each. */
  unfinished: string[]
}

const S_IFMT = 0o170000
const S_IFDIR = 0o040000

export function checkStore (store: Store): CheckReport {
  const problems: string[] = []
  const report: CheckReport = { problems, inodes: 0, dirents: 0, blocks: 0, snapshots: 0, versions: 0, unfinished: [] }
  const bs = store.blockSize
  const references = new Map<number, number>()
  const refer = (block: number): void => { references.set(block, (references.get(block) ?? 0) + 1) }

  const volumes = new Map<number, { name: string, nextIno: number }>()
  /** Clones still being copied, volumes being deleted: their records are partial. */
  const cloning = new Set<number>()
  /** Volumes whose rollback is setting records back: what their pending records read as. */
  const overlays = new Map<number, RollbackOverlay>()
  /** Volumes with a rollback in progress, in either phase: the only ones that may have pending records. */
  const rollingBack = new Set<number>()
  for (const { value } of store.volumes.getRange()) {
    volumes.set(value.id, { name: value.name, nextIno: value.nextIno })
    if (value.cloning !== undefined || value.deleting === true) cloning.add(value.id)
    if (value.rollback?.phase === 'apply') overlays.set(value.id, new RollbackOverlay(store, value.id, value.rollback.gen))
    if (value.cloning !== undefined) report.unfinished.push(`volume ${value.name}: its records are still being copied from ${value.origin?.snapshot ?? 'its snapshot'}; that goes on when the origin volume is mounted`)
    for (const marker of value.restoring ?? []) report.unfinished.push(`volume ${value.name}: a restore stopped half-way left ${marker.name} in directory ${marker.parent}; the next mount removes it`)
    if (value.deleting === true) report.unfinished.push(`volume ${value.name}: being deleted; snapfs delete-volume ${value.name} finishes it`)
    if (value.rollback !== undefined) {
      rollingBack.add(value.id)
      const { name, phase, done, total } = value.rollback
      report.unfinished.push(`volume ${value.name}: the rollback to ${name} ${phase === 'scan' ? 'is listing the changes' : `has set back ${done} of ${total} records`}; it goes on at the next mount`)
    }
  }
  for (const key of store.pending.getKeys()) {
    const { table, headKey } = decodePendingKey(key as Buffer)
    const { vol } = decodeInodeKey(headKey)
    if (!rollingBack.has(vol)) problems.push(`pending record (table ${table}) of volume ${vol}, which has no rollback in progress`)
  }
  /** Whether a head of a volume in the middle of a rollback is pending: the snapshot's version stands for it. */
  const pending = (vol: number, table: Table, key: Buffer): boolean => overlays.has(vol) && store.pending.doesExist(pendingKey(table, key))
  /** The pending records of `table` in volumes in the middle of a rollback (head keys). */
  const pendingOf = (table: Table): Buffer[] => {
    const keys: Buffer[] = []
    for (const vol of overlays.keys()) {
      for (const key of store.pending.getKeys({ start: pendingKey(table, inodeKey(vol, 0)), end: pendingKey(table + 1, inodeKey(vol, 0)) })) keys.push(decodePendingKey(key as Buffer).headKey)
    }
    return keys
  }

  const inodes = new Map<string, InodeRecord>()
  const addInode = (vol: number, ino: number, value: InodeRecord): void => {
    inodes.set(`${vol}:${ino}`, value)
    report.inodes++
    const volume = volumes.get(vol)
    if (volume === undefined) problems.push(`inode ${ino} belongs to unknown volume ${vol}`)
    else if (ino >= volume.nextIno) problems.push(`inode ${ino} of volume ${volume.name} is past the inode counter ${volume.nextIno}`)
  }
  for (const { key, value } of store.inodes.getRange()) {
    const { vol, ino } = decodeInodeKey(key)
    if (!pending(vol, Table.Inode, key)) addInode(vol, ino, value)
  }
  for (const headKey of pendingOf(Table.Inode)) {
    const { vol, ino } = decodeInodeKey(headKey)
    const value = overlays.get(vol)?.reader.inode(ino)
    if (value !== undefined) addInode(vol, ino, value)
  }
  for (const [vol, volume] of volumes) {
    if (!inodes.has(`${vol}:${ROOT_INO}`) && !cloning.has(vol)) problems.push(`volume ${volume.name} has no root directory`)
  }

  const links = new Map<string, number>()
  const entries: Array<{ key: Buffer, entry: DirentRecord }> = []
  for (const { key, value } of store.dirents.getRange()) {
    if (!pending(decodeInodeKey(key).vol, Table.Dirent, key)) entries.push({ key, entry: value as DirentRecord })
  }
  for (const headKey of pendingOf(Table.Dirent)) {
    const { vol, ino } = decodeInodeKey(headKey)
    const entry = overlays.get(vol)?.reader.dirent(ino, nameOfKey(headKey))
    if (entry !== undefined) entries.push({ key: headKey, entry })
  }
  for (const { key, entry } of entries) {
    report.dirents++
    const { vol, ino: parent } = decodeInodeKey(key)
    const name = nameOfKey(key).toString('utf8')
    const target = inodes.get(`${vol}:${entry.ino}`)
    const where = `entry "${name}" in directory ${parent} of volume ${vol}`
    if (!inodes.has(`${vol}:${parent}`)) problems.push(`${where}: the directory does not exist`)
    if (target === undefined) {
      problems.push(`${where}: points to missing inode ${entry.ino}`)
      continue
    }
    if ((target.mode & S_IFMT) !== entry.type) problems.push(`${where}: records type ${entry.type.toString(8)} but inode ${entry.ino} has ${(target.mode & S_IFMT).toString(8)}`)
    links.set(`${vol}:${entry.ino}`, (links.get(`${vol}:${entry.ino}`) ?? 0) + 1)
    if (entry.type === S_IFDIR) links.set(`${vol}:${parent}`, (links.get(`${vol}:${parent}`) ?? 0) + 1)
  }

  const orphans = new Set<string>()
  for (const key of store.orphans.getKeys()) {
    const { vol, ino } = decodeInodeKey(key as Buffer)
    orphans.add(`${vol}:${ino}`)
  }

  for (const [id, inode] of inodes) {
    const [vol, ino] = id.split(':').map(Number)
    if (cloning.has(vol)) continue
    const isDir = (inode.mode & S_IFMT) === S_IFDIR
    const expected = (links.get(id) ?? 0) + (isDir ? (ino === ROOT_INO ? 2 : 1) : 0)
    if (orphans.has(id) && inode.nlink === 0) continue
    if (inode.nlink !== expected) problems.push(`inode ${ino} (volume ${id.split(':')[0]}) has nlink ${inode.nlink}, but ${expected} links exist`)
  }

  const sectors = new Map<string, number>()
  const maps: Array<{ key: Buffer, map: BmapValue }> = []
  for (const { key, value } of store.bmap.getRange()) {
    const map = decodeBmap(value)
    refer(map.block)
    if (!pending(decodeInodeKey(key).vol, Table.Bmap, key)) maps.push({ key, map })
  }
  for (const headKey of pendingOf(Table.Bmap)) {
    const { vol, ino } = decodeInodeKey(headKey)
    const map = overlays.get(vol)?.reader.block(ino, indexOfBmapKey(headKey))
    if (map !== undefined) maps.push({ key: headKey, map })
  }
  for (const { key, map } of maps) {
    const { vol, ino } = decodeInodeKey(key)
    const index = indexOfBmapKey(key)
    const id = `${vol}:${ino}`
    const inode = inodes.get(id)
    sectors.set(id, (sectors.get(id) ?? 0) + sectorsOf(map.length))
    if (inode === undefined) problems.push(`block ${index} of missing inode ${ino} (volume ${vol})`)
    else if (index * bs >= inode.size) problems.push(`inode ${ino} maps block ${index}, past its size ${inode.size}`)
    if (map.length > bs || map.length === 0) problems.push(`inode ${ino} block ${index} has length ${map.length}`)
  }
  for (const [id, inode] of inodes) {
    if (cloning.has(Number(id.split(':')[0]))) continue
    if ((sectors.get(id) ?? 0) !== inode.blocks) problems.push(`inode ${id.split(':')[1]} records ${inode.blocks} sectors but maps ${sectors.get(id) ?? 0}`)
  }

  for (const { key, value } of store.history.getRange()) {
    const { table, headKey, birth } = decodeHistoryKey(key)
    const record = value as HistoryRecord
    if (table === Table.Bmap) refer(decodeBmap(record.v).block)
    const { vol } = decodeInodeKey(headKey)
    if (store.deadlist.get(deadKey(vol, record.d, table, headKey, birth)) === undefined) problems.push(`history version (table ${table}, birth ${birth}) is missing from the dead list`)
  }

  checkVersions(store, report)

  let maxBlock = 0
  for (const key of store.blocks.getKeys()) {
    const block = decodeBlockKey(key as Buffer)
    report.blocks++
    maxBlock = Math.max(maxBlock, block)
    const extra = store.refs.get(key as Buffer)
    const expected = 1 + (extra === undefined ? 0 : decodeCount(extra))
    const actual = references.get(block) ?? 0
    if (actual === 0) problems.push(`block ${block} is not referenced (leaked)`)
    else if (actual !== expected) problems.push(`block ${block} has ${actual} references, but its count says ${expected}`)
    references.delete(block)
  }
  for (const block of references.keys()) problems.push(`block ${block} is referenced but missing`)
  if (maxBlock >= store.nextBlock) problems.push(`block ${maxBlock} is past the block counter ${store.nextBlock}`)
  return report
}

/** A version of one record: born at `birth`, alive until `death` (Infinity for a head). */
interface Version { birth: number, death: number, sectors: number }

/** The snapshot catalogue, version chains, dead list, births index and space accounting. */
function checkVersions (store: Store, report: CheckReport): void {
  const problems = report.problems
  const volumes = new Map<number, VolumeRecord>()
  for (const { value } of store.volumes.getRange()) volumes.set(value.id, value)
  const snapshots = new Map<number, SnapshotRecord[]>()
  for (const { value, key } of store.snapshots.getRange()) {
    const { vol } = decodeSnapshotKey(key)
    const list = snapshots.get(vol) ?? []
    list.push(value)
    snapshots.set(vol, list)
    report.snapshots++
  }
  for (const [vol, volume] of volumes) {
    const list = snapshots.get(vol) ?? []
    const names = new Set<string>()
    for (const s of list) {
      if (s.status === 'deleting') report.unfinished.push(`snapshot ${s.name} of volume ${volume.name}: being deleted (${s.done ?? 0} of ${s.total ?? 0}); that goes on at the next mount`)
      if (names.has(s.name)) problems.push(`volume ${volume.name} has two snapshots named "${s.name}"`)
      names.add(s.name)
      if (s.gen >= volume.gen) problems.push(`snapshot ${s.name} froze generation ${s.gen}, not behind the volume's ${volume.gen}`)
    }
    const latest = list.length === 0 ? 0 : list[list.length - 1].gen
    if (volume.lastSnapGen !== latest) problems.push(`volume ${volume.name} records its latest snapshot at generation ${volume.lastSnapGen}, but it is ${latest}`)
  }

  // Every version of every record, by table and head key.
  const chains = new Map<string, Version[]>()
  const add = (table: Table, headKey: Buffer, version: Version): void => {
    const id = `${table}:${headKey.toString('hex')}`
    const chain = chains.get(id)
    if (chain === undefined) chains.set(id, [version])
    else chain.push(version)
  }
  const heads: Array<[Table, { getRange: () => Iterable<{ key: Buffer, value: any }> }]> =
    [[Table.Inode, store.inodes], [Table.Dirent, store.dirents], [Table.Xattr, store.xattrs]]
  for (const [table, db] of heads) {
    for (const { key, value } of db.getRange()) add(table, key, { birth: (value as { b: number }).b, death: Infinity, sectors: 0 })
  }
  for (const { key, value } of store.bmap.getRange()) {
    const map = decodeBmap(value)
    add(Table.Bmap, key, { birth: map.birth, death: Infinity, sectors: sectorsOf(map.length) })
  }
  for (const { key, value } of store.history.getRange()) {
    const { table, headKey, birth } = decodeHistoryKey(key)
    const version = value as HistoryRecord
    report.versions++
    add(table, headKey, { birth, death: version.d, sectors: table === Table.Bmap ? sectorsOf(decodeBmap(version.v).length) : 0 })
  }

  const used = new Map<number, number>()
  const written = new Map<number, number>()
  const held = new Map<number, number>()
  const refer = new Map<string, number>()
  const wrote = new Map<string, number>()
  const count = (map: Map<any, number>, key: unknown, bytes: number): void => { map.set(key, (map.get(key) ?? 0) + bytes) }
  for (const [id, chain] of chains) {
    const [table, hex] = id.split(':')
    const headKey = Buffer.from(hex, 'hex')
    const { vol } = decodeInodeKey(headKey)
    const volume = volumes.get(vol)
    if (volume === undefined) continue
    const list = snapshots.get(vol) ?? []
    const where = `record ${hex} (table ${table}) of volume ${volume.name}`
    chain.sort((a, b) => a.birth - b.birth)
    for (let i = 0; i < chain.length; i++) {
      const v = chain[i]
      if (v.birth < 1 || v.birth > volume.gen) problems.push(`${where}: a version born at ${v.birth}, outside generations 1..${volume.gen}`)
      if (v.death <= v.birth || (v.death !== Infinity && v.death > volume.gen)) problems.push(`${where}: a version lives from ${v.birth} to ${v.death}`)
      if (i + 1 < chain.length && v.death > chain[i + 1].birth) problems.push(`${where}: versions born at ${v.birth} and ${chain[i + 1].birth} overlap`)
      if (store.births.get(birthKey(vol, v.birth, Number(table) as Table, headKey)) === undefined) problems.push(`${where}: the version born at ${v.birth} is missing from the births index`)
      const seenBy = list.filter(s => s.gen >= v.birth && s.gen < v.death)
      if (v.death !== Infinity && seenBy.length === 0) problems.push(`${where}: the version born at ${v.birth} is kept but no snapshot sees it (leaked)`)
      if (Number(table) !== Table.Bmap) continue
      const bytes = v.sectors * 512
      if (v.death === Infinity) {
        count(used, vol, bytes)
        if (v.birth > volume.lastSnapGen) count(written, vol, bytes)
      } else count(held, vol, bytes)
      for (const s of seenBy) count(refer, `${vol}:${s.gen}`, bytes)
      const first = list.find(s => s.gen >= v.birth)
      if (first !== undefined && first.gen < v.death) count(wrote, `${vol}:${first.gen}`, bytes)
    }
  }
  for (const [vol, volume] of volumes) {
    const expect = (what: string, recorded: number, actual: number): void => {
      if (recorded !== actual) problems.push(`volume ${volume.name} records ${recorded} bytes ${what}, but a scan finds ${actual}`)
    }
    if (volume.cloning !== undefined || volume.deleting === true) continue
    expect('used', volume.used, used.get(vol) ?? 0)
    expect('written since its latest snapshot', volume.written, written.get(vol) ?? 0)
    expect('held by snapshots', volume.snapshotBytes, held.get(vol) ?? 0)
    for (const s of snapshots.get(vol) ?? []) {
      if (s.status !== 'ready') continue
      const key = `${vol}:${s.gen}`
      if (s.refer !== (refer.get(key) ?? 0)) problems.push(`snapshot ${s.name} records ${s.refer} bytes referenced, but a scan finds ${refer.get(key) ?? 0}`)
      if (s.written !== (wrote.get(key) ?? 0)) problems.push(`snapshot ${s.name} records ${s.written} bytes written, but a scan finds ${wrote.get(key) ?? 0}`)
    }
  }

  for (const key of store.deadlist.getKeys()) {
    const { death, table, headKey, birth } = decodeDeadKey(key as Buffer)
    const version = store.history.get(historyKey(table, headKey, birth)) as HistoryRecord | undefined
    if (version === undefined || version.d !== death) problems.push(`dead-list entry (table ${table}, birth ${birth}, death ${death}) has no such history version`)
  }
  for (const key of store.births.getKeys()) {
    const { vol, birth, table, headKey } = decodeBirthKey(key as Buffer)
    if (volumes.get(vol)?.deleting === true) continue
    const chain = chains.get(`${table}:${headKey.toString('hex')}`)
    if (chain === undefined || !chain.some(v => v.birth === birth)) problems.push(`births entry (volume ${vol}, table ${table}, birth ${birth}) lists no version`)
  }
}
