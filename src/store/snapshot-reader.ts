/**
 * Reads a volume as it was at a snapshot's generation `gen`: for each record, the version born at
 * or before `gen` and dead after it. The head is that version when it was born at or before
 * `gen` (heads are alive); otherwise the newest history version born at or before `gen` is, if
 * it died after `gen`. Reads only; every answer is a copy the caller may keep.
 */
import { Table, bmapKey, decodeBmap, decodeHistoryKey, direntKey, historyKey, indexOfBmapKey, inodeKey, nameOfKey, prefixRange, xattrKey, type BmapValue } from './keys.js'
import type { DirentRecord, HistoryRecord, InodeRecord, XattrRecord } from './records.js'
import type { Database } from 'lmdb'
import type { Store } from './store.js'

export class SnapshotReader {
  private readonly store: Store
  private readonly vol: number
  readonly gen: number

  constructor (store: Store, vol: number, gen: number) {
    this.store = store
    this.vol = vol
    this.gen = gen
  }

  inode (ino: number): InodeRecord | undefined {
    const key = inodeKey(this.vol, ino)
    const head = this.store.inodes.get(key)
    if (head !== undefined && head.b <= this.gen) return head
    return this.decoded<InodeRecord>(Table.Inode, key, this.store.inodes)
  }

  dirent (parent: number, name: Buffer): DirentRecord | undefined {
    const key = direntKey(this.vol, parent, name)
    const head = this.store.dirents.get(key) as DirentRecord | undefined
    if (head !== undefined && head.b <= this.gen) return head
    return this.decoded<DirentRecord>(Table.Dirent, key, this.store.dirents)
  }

  xattr (ino: number, name: Buffer): XattrRecord | undefined {
    const key = xattrKey(this.vol, ino, name)
    const head = this.store.xattrs.get(key) as XattrRecord | undefined
    if (head !== undefined && head.b <= this.gen) return head
    return this.decoded<XattrRecord>(Table.Xattr, key, this.store.xattrs)
  }

  /** The entries of a directory at `gen`, by name. */
  dirents (parent: number): Map<string, DirentRecord> {
    return this.named<DirentRecord>(Table.Dirent, this.store.dirents, inodeKey(this.vol, parent))
  }

  /** The extended attributes of an inode at `gen`, by name. */
  xattrs (ino: number): Map<string, Buffer> {
    const values = new Map<string, Buffer>()
    for (const [name, record] of this.named<XattrRecord>(Table.Xattr, this.store.xattrs, inodeKey(this.vol, ino))) values.set(name, record.v)
    return values
  }

  /** Which block held block `index` of an inode at `gen` (undefined: a hole). */
  block (ino: number, index: number): BmapValue | undefined {
    const key = bmapKey(this.vol, ino, index)
    const head = this.store.bmap.get(key)
    if (head !== undefined) {
      const map = decodeBmap(head)
      if (map.birth <= this.gen) return map
    }
    const raw = this.version(Table.Bmap, key)
    return raw === undefined ? undefined : decodeBmap(raw)
  }

  /** Every block of an inode at `gen`, by index. */
  blocks (ino: number): Map<number, BmapValue> {
    const prefix = inodeKey(this.vol, ino)
    const blocks = new Map<number, BmapValue>()
    for (const { key, value } of this.store.bmap.getRange(prefixRange(prefix))) {
      const map = decodeBmap(value)
      if (map.birth <= this.gen) blocks.set(indexOfBmapKey(key), map)
    }
    const history = Buffer.concat([Buffer.from([Table.Bmap]), prefix])
    for (const { key, value } of this.store.history.getRange(prefixRange(history))) {
      const { headKey, birth } = decodeHistoryKey(key)
      const version = value as HistoryRecord
      if (birth <= this.gen && version.d > this.gen) blocks.set(indexOfBmapKey(headKey), decodeBmap(version.v))
    }
    return blocks
  }

  /** The encoded version of record `key` of `table` visible at `gen`, if any. */
  encoded (table: Table, key: Buffer): Buffer | undefined {
    if (table === Table.Bmap) {
      const head = this.store.bmap.get(key)
      if (head !== undefined && decodeBmap(head).birth <= this.gen) return Buffer.from(head)
      return this.version(table, key)
    }
    const db = this.store.headsOf(table)
    const head = db.get(key) as { b: number } | undefined
    if (head !== undefined && head.b <= this.gen) return Buffer.from(db.getBinary(key) as Buffer)
    return this.version(table, key)
  }

  /** The encoded history version of `key` visible at `gen`, if any. */
  private version (table: Table, key: Buffer): Buffer | undefined {
    const range = { start: historyKey(table, key, this.gen), end: historyKey(table, key, 0), reverse: true, limit: 1 }
    for (const { key: hkey, value } of this.store.history.getRange(range)) {
      const { headKey } = decodeHistoryKey(hkey)
      const version = value as HistoryRecord
      if (headKey.equals(key) && version.d > this.gen) return version.v
    }
    return undefined
  }

  private decoded<T> (table: Table, key: Buffer, db: Database<any, Buffer>): T | undefined {
    const raw = this.version(table, key)
    return raw === undefined ? undefined : this.store.decodeRecord<T>(db, raw)
  }

  /** Heads and history versions under `prefix` (a directory or an inode), merged at `gen`. */
  private named<T extends { b: number }> (table: Table, db: Database<any, Buffer>, prefix: Buffer): Map<string, T> {
    const visible = new Map<string, T>()
    for (const { key, value } of db.getRange(prefixRange(prefix))) {
      if ((value as T).b <= this.gen) visible.set(nameOfKey(key).toString('utf8'), value as T)
    }
    const history = Buffer.concat([Buffer.from([table]), prefix])
    for (const { key, value } of this.store.history.getRange(prefixRange(history))) {
      const { headKey, birth } = decodeHistoryKey(key)
      const version = value as HistoryRecord
      if (birth > this.gen || version.d <= this.gen) continue
      visible.set(nameOfKey(headKey).toString('utf8'), this.store.decodeRecord<T>(db, version.v))
    }
    return visible
  }
}
