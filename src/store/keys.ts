/**
 * The key schema of the store, written once. Every LMDB key snapfs builds comes from an encoder
 * here; nobody else assembles key bytes. All integers are big-endian so that LMDB's byte order is
 * numeric order, and every key of a volume's records starts with its volume id.
 *
 * | database  | key                                              | value                          |
 * |-----------|--------------------------------------------------|--------------------------------|
 * | meta      | string ("format", "nextBlock", "volume:NAME")     | msgpack                        |
 * | volumes   | vol u32                                          | VolumeRecord (msgpack)         |
 * | inodes    | vol u32, ino u64                                 | InodeRecord (msgpack), head    |
 * | dirents   | vol u32, parent ino u64, name bytes              | DirentRecord (msgpack), head   |
 * | xattrs    | vol u32, ino u64, name bytes                     | XattrRecord (msgpack), head    |
 * | bmap      | vol u32, ino u64, block index u64                | block u64, birth u32, len u32  |
 * | blocks    | block id u64                                     | the block's bytes (raw)        |
 * | refs      | block id u64                                     | extra references u32 (raw)     |
 * | orphans   | vol u32, ino u64                                 | empty: unlinked while open     |
 * | history   | table u8, head key, birth u32                    | HistoryRecord (msgpack)        |
 * | deadlist  | vol u32, death u32, table u8, head key, birth u32 | empty                          |
 * | births    | vol u32, birth u32, table u8, head key           | empty                          |
 * | snapshots | vol u32, gen u32                                 | SnapshotRecord (msgpack)       |
 * | pending   | vol u32, table u8, head key without its vol       | empty: a rollback's to-do      |
 *
 * "Head" records are what the live volume reads. A head carries its birth generation; when a head
 * born at or before the volume's latest snapshot is overwritten or deleted, the old version moves
 * to `history` (with its death generation) and is listed in `deadlist` under that death, so a
 * snapshot can still read it and deleting a snapshot knows what it may free. `births` lists every
 * version by the generation that created it, so "what changed since generation g" is a range scan.
 * Blocks are shared by reference: a block has one reference unless `refs` says how many more.
 * `pending` lists the records a rollback in progress has yet to set back (store/rollback.ts).
 */

/** Tables whose records are versioned by generation (the `table` byte in history keys). */
export const enum Table {
  Inode = 1,
  Dirent = 2,
  Xattr = 3,
  Bmap = 4
}

/** Longest file name, in bytes (POSIX NAME_MAX on Linux). */
export const NAME_MAX = 255

function u64 (buf: Buffer, offset: number, value: number): void {
  buf.writeUInt32BE(Math.floor(value / 0x100000000), offset)
  buf.writeUInt32BE(value >>> 0, offset + 4)
}

function readU64 (buf: Buffer, offset: number): number {
  return buf.readUInt32BE(offset) * 0x100000000 + buf.readUInt32BE(offset + 4)
}

/** vol u32: the prefix of every record of a volume in inodes, dirents, xattrs, bmap, orphans. */
export function volumePrefix (vol: number): Buffer {
  const key = Buffer.allocUnsafe(4)
  key.writeUInt32BE(vol, 0)
  return key
}

/** The same record key in volume `vol` (a clone's copy of it). */
export function withVolume (key: Buffer, vol: number): Buffer {
  const copy = Buffer.from(key)
  copy.writeUInt32BE(vol, 0)
  return copy
}

/** The volume and inode of a key that starts with vol u32, ino u64 (inodes, dirents, xattrs, bmap, orphans). */
export function decodeInodeKey (key: Buffer): { vol: number, ino: number } {
  return { vol: key.readUInt32BE(0), ino: readU64(key, 4) }
}

/** The block index of a bmap key. */
export function indexOfBmapKey (key: Buffer): number {
  return readU64(key, 12)
}

/** The block id of a blocks or refs key. */
export function decodeBlockKey (key: Buffer): number {
  return readU64(key, 0)
}

/** The table, head key and birth of a history key. */
export function decodeHistoryKey (key: Buffer): { table: Table, headKey: Buffer, birth: number } {
  return { table: key[0] as Table, headKey: key.subarray(1, key.length - 4), birth: key.readUInt32BE(key.length - 4) }
}

/** vol u32, ino u64: an inode head, an orphan, or the prefix of an inode's dirents/xattrs/bmap. */
export function inodeKey (vol: number, ino: number): Buffer {
  const key = Buffer.allocUnsafe(12)
  key.writeUInt32BE(vol, 0)
  u64(key, 4, ino)
  return key
}

/** vol u32, parent u64, name: one directory entry. */
export function direntKey (vol: number, parent: number, name: Buffer): Buffer {
  const key = Buffer.allocUnsafe(12 + name.length)
  key.writeUInt32BE(vol, 0)
  u64(key, 4, parent)
  name.copy(key, 12)
  return key
}

/** The name part of a dirent or xattr key. */
export function nameOfKey (key: Buffer): Buffer {
  return key.subarray(12)
}

/** vol u32, ino u64, name: one extended attribute. */
export const xattrKey = direntKey

/** vol u32, ino u64, index u64: one block-map entry. */
export function bmapKey (vol: number, ino: number, index: number): Buffer {
  const key = Buffer.allocUnsafe(20)
  key.writeUInt32BE(vol, 0)
  u64(key, 4, ino)
  u64(key, 12, index)
  return key
}

/** The range of keys that start with `prefix`, for getRange({ start, end }). */
export function prefixRange (prefix: Buffer): { start: Buffer, end: Buffer } {
  const end = Buffer.concat([prefix, Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])])
  return { start: prefix, end }
}

/** block id u64. */
export function blockKey (id: number): Buffer {
  const key = Buffer.allocUnsafe(8)
  u64(key, 0, id)
  return key
}

/**
 * The value of a bmap head: which block holds the data, the generation that wrote it, and how many
 * bytes the block stores (a block past the end of its file stores only up to the end; the rest
 * reads as zeros).
 */
export interface BmapValue { block: number, birth: number, length: number }

export function encodeBmap (value: BmapValue): Buffer {
  const buf = Buffer.allocUnsafe(16)
  u64(buf, 0, value.block)
  buf.writeUInt32BE(value.birth, 8)
  buf.writeUInt32BE(value.length, 12)
  return buf
}

export function decodeBmap (buf: Buffer): BmapValue {
  return { block: readU64(buf, 0), birth: buf.readUInt32BE(8), length: buf.readUInt32BE(12) }
}

/** Space a stored block takes, in 512-byte sectors (st_blocks units), rounded to 4 KiB pages. */
export function sectorsOf (length: number): number {
  return Math.ceil(length / 4096) * 8
}

/** table u8, head key, birth u32: an old version of a head record. */
export function historyKey (table: Table, headKey: Buffer, birth: number): Buffer {
  const key = Buffer.allocUnsafe(1 + headKey.length + 4)
  key[0] = table
  headKey.copy(key, 1)
  key.writeUInt32BE(birth, 1 + headKey.length)
  return key
}

/** vol u32, death u32, table u8, head key, birth u32: a version that died at `death`. */
export function deadKey (vol: number, death: number, table: Table, headKey: Buffer, birth: number): Buffer {
  const key = Buffer.allocUnsafe(9 + headKey.length + 4)
  key.writeUInt32BE(vol, 0)
  key.writeUInt32BE(death, 4)
  key[8] = table
  headKey.copy(key, 9)
  key.writeUInt32BE(birth, 9 + headKey.length)
  return key
}

/** vol u32, birth u32, table u8, head key: a version born at `birth`. */
export function birthKey (vol: number, birth: number, table: Table, headKey: Buffer): Buffer {
  const key = Buffer.allocUnsafe(9 + headKey.length)
  key.writeUInt32BE(vol, 0)
  key.writeUInt32BE(birth, 4)
  key[8] = table
  headKey.copy(key, 9)
  return key
}

/** vol u32, gen u32: the snapshot of a volume that froze generation `gen`. */
export function snapshotKey (vol: number, gen: number): Buffer {
  const key = Buffer.allocUnsafe(8)
  key.writeUInt32BE(vol, 0)
  key.writeUInt32BE(gen, 4)
  return key
}

/** The volume and generation of a snapshots key. */
export function decodeSnapshotKey (key: Buffer): { vol: number, gen: number } {
  return { vol: key.readUInt32BE(0), gen: key.readUInt32BE(4) }
}

/** vol u32, death u32: the start of a volume's dead-list entries that died at `death` or later. */
export function deadPrefix (vol: number, death: number): Buffer {
  return snapshotKey(vol, death)
}

/** vol u32, birth u32: the start of a volume's births entries born at `birth` or later. */
export function birthPrefix (vol: number, birth: number): Buffer {
  return snapshotKey(vol, birth)
}

/** The death, table, head key and birth of a dead-list key. */
export function decodeDeadKey (key: Buffer): { death: number, table: Table, headKey: Buffer, birth: number } {
  return { death: key.readUInt32BE(4), table: key[8] as Table, headKey: key.subarray(9, key.length - 4), birth: key.readUInt32BE(key.length - 4) }
}

/** The volume, birth, table and head key of a births key. */
export function decodeBirthKey (key: Buffer): { vol: number, birth: number, table: Table, headKey: Buffer } {
  return { vol: key.readUInt32BE(0), birth: key.readUInt32BE(4), table: key[8] as Table, headKey: key.subarray(9) }
}

/** vol u32, table u8, head key without its vol: a record a rollback has yet to set back. */
export function pendingKey (table: Table, headKey: Buffer): Buffer {
  const key = Buffer.allocUnsafe(headKey.length + 1)
  headKey.copy(key, 0, 0, 4)
  key[4] = table
  headKey.copy(key, 5, 4)
  return key
}

/** The table and head key of a pending key. */
export function decodePendingKey (key: Buffer): { table: Table, headKey: Buffer } {
  return { table: key[4] as Table, headKey: Buffer.concat([key.subarray(0, 4), key.subarray(5)]) }
}

/** vol u32, table u8, ino u64: the start of an inode's pending records in one table. */
export function pendingInodePrefix (vol: number, table: Table, ino: number): Buffer {
  return pendingKey(table, inodeKey(vol, ino))
}

/** The extra-reference count stored in `refs`. */
export function encodeCount (count: number): Buffer {
  const buf = Buffer.allocUnsafe(4)
  buf.writeUInt32BE(count, 0)
  return buf
}

export function decodeCount (buf: Buffer): number {
  return buf.readUInt32BE(0)
}
