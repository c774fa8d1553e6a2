/**
 * `snapfs check`: verifies, by a full scan, every invariant the store relies on, and reports each
 * violation as one line. It reads only; run it on a store no daemon is writing.
 *
 * Checked: the format record; per volume, that the root exists, every entry points to an existing
 * inode of the type it records, link counts equal the entries that name each inode (orphans
 * excepted), block maps point to existing blocks within the file's size, and each inode's
 * allocated sectors equal its blocks; for the whole store, that each block's reference count is
 * what the block maps (heads and history) hold, that no block is unreferenced, that every history
 * version is in the dead list, and that the id counters are past every id in use.
 */
import { Table, deadKey, decodeBlockKey, decodeBmap, decodeCount, decodeHistoryKey, decodeInodeKey, indexOfBmapKey, nameOfKey, sectorsOf } from './keys.js'
import { ROOT_INO, type DirentRecord, type InodeRecord, type HistoryRecord } from './records.js'
import type { Store } from './store.js'

export interface CheckReport {
  problems: string[]
  inodes: number
  dirents: number
  blocks: number
}

const S_IFMT = 0o170000
const S_IFDIR = 0o040000

export function checkStore (store: Store): CheckReport {
  const problems: string[] = []
  const report: CheckReport = { problems, inodes: 0, dirents: 0, blocks: 0 }
  const bs = store.blockSize
  const references = new Map<number, number>()
  const refer = (block: number): void => { references.set(block, (references.get(block) ?? 0) + 1) }

  const volumes = new Map<number, { name: string, nextIno: number }>()
  for (const { value } of store.volumes.getRange()) volumes.set(value.id, { name: value.name, nextIno: value.nextIno })

  const inodes = new Map<string, InodeRecord>()
  for (const { key, value } of store.inodes.getRange()) {
    const { vol, ino } = decodeInodeKey(key)
    inodes.set(`${vol}:${ino}`, value)
    report.inodes++
    const volume = volumes.get(vol)
    if (volume === undefined) problems.push(`inode ${ino} belongs to unknown volume ${vol}`)
    else if (ino >= volume.nextIno) problems.push(`inode ${ino} of volume ${volume.name} is past the inode counter ${volume.nextIno}`)
  }
  for (const [vol, volume] of volumes) {
    if (!inodes.has(`${vol}:${ROOT_INO}`)) problems.push(`volume ${volume.name} has no root directory`)
  }

  const links = new Map<string, number>()
  for (const { key, value } of store.dirents.getRange()) {
    report.dirents++
    const { vol, ino: parent } = decodeInodeKey(key)
    const name = nameOfKey(key).toString('utf8')
    const entry = value as DirentRecord
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
    const [, ino] = id.split(':').map(Number)
    const isDir = (inode.mode & S_IFMT) === S_IFDIR
    const expected = (links.get(id) ?? 0) + (isDir ? (ino === ROOT_INO ? 2 : 1) : 0)
    if (orphans.has(id) && inode.nlink === 0) continue
    if (inode.nlink !== expected) problems.push(`inode ${ino} (volume ${id.split(':')[0]}) has nlink ${inode.nlink}, but ${expected} links exist`)
  }

  const sectors = new Map<string, number>()
  for (const { key, value } of store.bmap.getRange()) {
    const { vol, ino } = decodeInodeKey(key)
    const index = indexOfBmapKey(key)
    const map = decodeBmap(value)
    const id = `${vol}:${ino}`
    const inode = inodes.get(id)
    refer(map.block)
    sectors.set(id, (sectors.get(id) ?? 0) + sectorsOf(map.length))
    if (inode === undefined) problems.push(`block ${index} of missing inode ${ino} (volume ${vol})`)
    else if (index * bs >= inode.size) problems.push(`inode ${ino} maps block ${index}, past its size ${inode.size}`)
    if (map.length > bs || map.length === 0) problems.push(`inode ${ino} block ${index} has length ${map.length}`)
  }
  for (const [id, inode] of inodes) {
    if ((sectors.get(id) ?? 0) !== inode.blocks) problems.push(`inode ${id.split(':')[1]} records ${inode.blocks} sectors but maps ${sectors.get(id) ?? 0}`)
  }

  for (const { key, value } of store.history.getRange()) {
    const { table, headKey, birth } = decodeHistoryKey(key)
    const record = value as HistoryRecord
    if (table === Table.Bmap) refer(decodeBmap(record.v).block)
    const { vol } = decodeInodeKey(headKey)
    if (store.deadlist.get(deadKey(vol, record.d, table, headKey, birth)) === undefined) problems.push(`history version (table ${table}, birth ${birth}) is missing from the dead list`)
  }

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
