/**
 * Versioned writes to head records, inside one LMDB write transaction. This is the only code that
 * puts or removes inode, dirent, xattr and bmap heads, so the generation rules live in one place:
 *
 * - A new head is born in the volume's current generation (`gen`) and listed in `births`.
 * - Replacing or removing a head born after the latest snapshot (`birth > lastSnapGen`) happens in
 *   place: nobody else can see it. Its block, if it had one, is released.
 * - Replacing or removing a head born at or before the latest snapshot keeps it for the snapshots:
 *   it moves to `history` with death = `gen` and is listed in `deadlist` under that death.
 *
 * Space accounting follows the same rules: a block-map head counts in the volume's `used`, and in
 * `written` when born after the latest snapshot; a version moved to history counts in
 * `snapshotBytes` instead. `finish` adds the changes to the volume record.
 *
 * While a rollback is in its apply phase (rollback.ts), a record still pending is set back to the
 * snapshot's version before anything else writes it (`settle`), so the volume's writes apply over
 * what it read, and the sector changes returned are against that version.
 *
 * Every method must run inside a transaction callback of the store (see fs/commit.ts): reads then
 * see the transaction's own writes, and all of them commit together or not at all.
 */
import {
  Table, type BmapValue, birthKey, blockKey, bmapKey, deadKey, decodeBmap, decodeCount, decodeInodeKey, decodePendingKey, encodeBmap,
  encodeCount, historyKey, indexOfBmapKey, inodeKey, nameOfKey, pendingInodePrefix, pendingKey, prefixRange, direntKey, sectorsOf, xattrKey
} from './keys.js'
import type { DirentRecord, InodeRecord, VolumeRecord, XattrRecord } from './records.js'
import { SnapshotReader } from './snapshot-reader.js'
import { BLOCK_RESERVE, type Store } from './store.js'

const EMPTY = Buffer.alloc(0)

export class VersionWriter {
  private readonly store: Store
  private readonly vol: number
  private readonly gen: number
  private readonly lastSnapGen: number
  /** The snapshot a rollback in its apply phase sets records back to, else null. */
  private readonly rollback: SnapshotReader | null
  /** Whether the block reservation moved and must be saved with this transaction. */
  private allocated = false
  /** Changes to the volume's space counters, in bytes. */
  private used = 0
  private written = 0
  private snapshotBytes = 0

  constructor (store: Store, volume: VolumeRecord) {
    this.store = store
    this.vol = volume.id
    this.gen = volume.gen
    this.lastSnapGen = volume.lastSnapGen
    const rollback = volume.rollback
    this.rollback = rollback?.phase === 'apply' ? new SnapshotReader(store, volume.id, rollback.gen) : null
  }

  /**
   * Sets a record a rollback has yet to set back to the snapshot's version, and takes it off the
   * rollback's list; does nothing for any other record.
   */
  settle (table: Table, key: Buffer): void {
    if (this.rollback === null) return
    const listed = pendingKey(table, key)
    if (!this.store.pending.doesExist(listed)) return
    this.store.pending.removeSync(listed)
    const { ino } = decodeInodeKey(key)
    if (table === Table.Inode) {
      const old = this.rollback.inode(ino)
      if (old === undefined) this.removeInode(ino)
      else this.putInode(ino, old)
    } else if (table === Table.Dirent) {
      const name = nameOfKey(key)
      const old = this.rollback.dirent(ino, name)
      if (old === undefined) this.removeDirent(ino, name)
      else this.putDirent(ino, name, { ino: old.ino, type: old.type })
    } else if (table === Table.Xattr) {
      const name = nameOfKey(key)
      const old = this.rollback.xattr(ino, name)
      if (old === undefined) this.removeXattr(ino, name)
      else this.putXattr(ino, name, old.v)
    } else {
      const index = indexOfBmapKey(key)
      const old = this.rollback.block(ino, index)
      if (old === undefined) this.removeBlock(ino, index)
      else this.shareBlock(ino, index, old)
    }
  }

  /** Settles every pending record of `table` from `start` to the end of inode `ino`'s records. */
  private settleFrom (table: Table, ino: number, start: Buffer): void {
    if (this.rollback === null) return
    const { end } = prefixRange(pendingInodePrefix(this.vol, table, ino))
    for (const key of [...this.store.pending.getKeys({ start: pendingKey(table, start), end })]) this.settle(table, decodePendingKey(key as Buffer).headKey)
  }

  putInode (ino: number, record: InodeRecord): void {
    const key = inodeKey(this.vol, ino)
    this.settle(Table.Inode, key)
    this.retireHead(Table.Inode, this.store.inodes, key, this.store.inodes.get(key)?.b, true)
    this.store.inodes.putSync(key, { ...record, b: this.gen })
  }

  removeInode (ino: number): void {
    const key = inodeKey(this.vol, ino)
    this.settle(Table.Inode, key)
    const old = this.store.inodes.get(key)
    if (old === undefined) return
    this.retireHead(Table.Inode, this.store.inodes, key, old.b, false)
    this.store.inodes.removeSync(key)
  }

  putDirent (parent: number, name: Buffer, record: Omit<DirentRecord, 'b'>): void {
    const key = direntKey(this.vol, parent, name)
    this.settle(Table.Dirent, key)
    this.retireHead(Table.Dirent, this.store.dirents, key, (this.store.dirents.get(key) as DirentRecord | undefined)?.b, true)
    this.store.dirents.putSync(key, { ...record, b: this.gen })
  }

  removeDirent (parent: number, name: Buffer): void {
    const key = direntKey(this.vol, parent, name)
    this.settle(Table.Dirent, key)
    const old = this.store.dirents.get(key) as DirentRecord | undefined
    if (old === undefined) return
    this.retireHead(Table.Dirent, this.store.dirents, key, old.b, false)
    this.store.dirents.removeSync(key)
  }

  putXattr (ino: number, name: Buffer, value: Buffer): void {
    const key = xattrKey(this.vol, ino, name)
    this.settle(Table.Xattr, key)
    this.retireHead(Table.Xattr, this.store.xattrs, key, (this.store.xattrs.get(key) as XattrRecord | undefined)?.b, true)
    this.store.xattrs.putSync(key, { b: this.gen, v: value })
  }

  removeXattr (ino: number, name: Buffer): void {
    const key = xattrKey(this.vol, ino, name)
    this.settle(Table.Xattr, key)
    const old = this.store.xattrs.get(key) as XattrRecord | undefined
    if (old === undefined) return
    this.retireHead(Table.Xattr, this.store.xattrs, key, old.b, false)
    this.store.xattrs.removeSync(key)
  }

  /** Removes every extended attribute of an inode. */
  removeXattrsOf (ino: number): void {
    this.settleFrom(Table.Xattr, ino, inodeKey(this.vol, ino))
    const keys = [...this.store.xattrs.getKeys(prefixRange(inodeKey(this.vol, ino)))]
    for (const key of keys) {
      const old = this.store.xattrs.get(key) as XattrRecord
      this.retireHead(Table.Xattr, this.store.xattrs, key, old.b, false)
      this.store.xattrs.removeSync(key)
    }
  }

  /**
   * Stores the data of block `index` of an inode. A block written in this generation and held by
   * no one else is overwritten in place; otherwise the data goes to a new block. Returns the change
   * in the inode's allocated sectors.
   */
  putBlock (ino: number, index: number, data: Buffer): number {
    const key = bmapKey(this.vol, ino, index)
    this.settle(Table.Bmap, key)
    const raw = this.store.bmap.get(key)
    const old = raw === undefined ? undefined : decodeBmap(raw)
    const oldSectors = old === undefined ? 0 : sectorsOf(old.length)
    if (old !== undefined && old.birth > this.lastSnapGen && this.store.refs.get(blockKey(old.block)) === undefined) {
      this.store.blocks.putSync(blockKey(old.block), data)
      if (old.length !== data.length) this.store.bmap.putSync(key, encodeBmap({ ...old, length: data.length }))
      this.addLive(sectorsOf(data.length) - oldSectors)
      return sectorsOf(data.length) - oldSectors
    }
    const block = this.allocateBlock()
    this.store.blocks.putSync(blockKey(block), data)
    if (old !== undefined) this.retireBlockHead(key, old.block, old.birth, raw as Buffer, true)
    this.store.bmap.putSync(key, encodeBmap({ block, birth: this.gen, length: data.length }))
    this.addLive(sectorsOf(data.length))
    if (old?.birth !== this.gen) this.store.births.putSync(birthKey(this.vol, this.gen, Table.Bmap, key), EMPTY)
    return sectorsOf(data.length) - oldSectors
  }

  /**
   * Makes block `index` of an inode share an existing block (a restore from a snapshot): one more
   * reference to `map.block`, never a copy. Returns the change in the inode's allocated sectors.
   */
  shareBlock (ino: number, index: number, map: BmapValue): number {
    const removed = this.removeBlock(ino, index)
    const key = bmapKey(this.vol, ino, index)
    const refKey = blockKey(map.block)
    const extra = this.store.refs.get(refKey)
    this.store.refs.putSync(refKey, encodeCount((extra === undefined ? 0 : decodeCount(extra)) + 1))
    this.store.bmap.putSync(key, encodeBmap({ block: map.block, birth: this.gen, length: map.length }))
    this.store.births.putSync(birthKey(this.vol, this.gen, Table.Bmap, key), EMPTY)
    this.addLive(sectorsOf(map.length))
    return removed + sectorsOf(map.length)
  }

  /**
   * A new block id from this process's reservation. A new reservation starts past the one saved
   * in the store, read in this transaction: daemons of other volumes share the store and reserve
   * their own ranges.
   */
  private allocateBlock (): number {
    if (this.store.nextBlock >= this.store.blockCeiling) {
      const saved = (this.store.meta.get('nextBlock') as number | undefined) ?? 1
      this.store.nextBlock = Math.max(this.store.nextBlock, saved)
      this.store.blockCeiling = this.store.nextBlock + BLOCK_RESERVE
      this.allocated = true
    }
    return this.store.nextBlock++
  }

  /** Makes block `index` of an inode a hole. Returns the change in allocated sectors (<= 0). */
  removeBlock (ino: number, index: number): number {
    const key = bmapKey(this.vol, ino, index)
    this.settle(Table.Bmap, key)
    const raw = this.store.bmap.get(key)
    if (raw === undefined) return 0
    const old = decodeBmap(raw)
    this.retireBlockHead(key, old.block, old.birth, raw, false)
    this.store.bmap.removeSync(key)
    return -sectorsOf(old.length)
  }

  /** Makes every block from `fromIndex` on a hole. Returns the change in allocated sectors (<= 0). */
  removeBlocksFrom (ino: number, fromIndex: number): number {
    this.settleFrom(Table.Bmap, ino, bmapKey(this.vol, ino, fromIndex))
    const { end } = prefixRange(inodeKey(this.vol, ino))
    const entries = [...this.store.bmap.getRange({ start: bmapKey(this.vol, ino, fromIndex), end })]
    let sectors = 0
    for (const { key, value } of entries) {
      const old = decodeBmap(value)
      this.retireBlockHead(key, old.block, old.birth, value, false)
      this.store.bmap.removeSync(key)
      sectors -= sectorsOf(old.length)
    }
    return sectors
  }

  markOrphan (ino: number): void {
    this.store.orphans.putSync(inodeKey(this.vol, ino), EMPTY)
  }

  clearOrphan (ino: number): void {
    this.store.orphans.removeSync(inodeKey(this.vol, ino))
  }

  /**
   * Saves the block reservation if it moved, and the volume record (with the space counters this
   * writer changed) if anything in it changed. Call last.
   */
  finish (volume: VolumeRecord, volumeChanged: boolean): void {
    if (this.allocated) this.store.meta.putSync('nextBlock', this.store.blockCeiling)
    const counted = this.used !== 0 || this.written !== 0 || this.snapshotBytes !== 0
    volume.used += this.used
    volume.written += this.written
    volume.snapshotBytes += this.snapshotBytes
    this.used = this.written = this.snapshotBytes = 0
    if (volumeChanged || counted) this.store.volumes.putSync(volume.id, volume)
  }

  private retireBlockHead (key: Buffer, block: number, birth: number, raw: Buffer, replaced: boolean): void {
    const sectors = sectorsOf(decodeBmap(raw).length)
    if (this.retire(Table.Bmap, key, birth, raw, replaced)) {
      this.used -= sectors * 512
      this.snapshotBytes += sectors * 512
      return
    }
    this.addLive(-sectors)
    releaseBlock(this.store, block)
  }

  /**
   * Counts live data that grew or shrank by `sectors`. Only heads born after the latest snapshot
   * change in place or go for good, so the change is always to data written since that snapshot.
   */
  private addLive (sectors: number): void {
    this.used += sectors * 512
    this.written += sectors * 512
  }

  /**
   * Retires the head at `key` (born at `birth`, if it exists) before it is replaced (`replaced`)
   * or removed, and lists the replacement's birth.
   */
  private retireHead (table: Table, db: { getBinary: (key: Buffer) => Buffer | undefined }, key: Buffer, birth: number | undefined, replaced: boolean): void {
    if (birth !== undefined) this.retire(table, key, birth, db.getBinary(key) as Buffer, replaced)
    if (replaced && birth !== this.gen) this.store.births.putSync(birthKey(this.vol, this.gen, table, key), EMPTY)
  }

  /**
   * Moves an old head to history when a snapshot can see it (true). Otherwise the version is gone
   * for good (false): its births entry goes too, unless the replacement is born in the same
   * generation and so keeps that entry.
   */
  private retire (table: Table, key: Buffer, birth: number, raw: Buffer, replaced: boolean): boolean {
    if (birth > this.lastSnapGen) {
      if (!replaced || birth !== this.gen) this.store.births.removeSync(birthKey(this.vol, birth, table, key))
      return false
    }
    this.store.history.putSync(historyKey(table, key, birth), { d: this.gen, v: Buffer.from(raw) })
    this.store.deadlist.putSync(deadKey(this.vol, this.gen, table, key, birth), EMPTY)
    return true
  }
}

/** Drops one reference to a block, deleting it with its last reference (inside a transaction). */
export function releaseBlock (store: Store, block: number): void {
  const key = blockKey(block)
  const extra = store.refs.get(key)
  if (extra === undefined) {
    store.blocks.removeSync(key)
    return
  }
  const count = decodeCount(extra)
  if (count <= 1) store.refs.removeSync(key)
  else store.refs.putSync(key, encodeCount(count - 1))
}
