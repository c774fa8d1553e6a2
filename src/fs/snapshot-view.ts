/**
 * A snapshot, browsable: the read-only view of a volume at one generation, by inode number. It
 * reads through the store's SnapshotReader and keeps what it read (metadata in maps, data in a
 * page cache of its own), which stays right because a snapshot never changes. Once the snapshot
 * is being deleted the view is stale: every call fails with ESTALE, and nothing reads blocks the
 * delete may have freed.
 */
import { fail } from '../errors.js'
import { SnapshotReader } from '../store/snapshot-reader.js'
import type { DirentRecord, SnapshotRecord } from '../store/records.js'
import type { Store } from '../store/store.js'
import { copySlices, PageCache } from '../cache/pagecache.js'
import { attrOf, isDir, isLink, type Attr, type InodeFields } from './inode.js'
import type { DirEntry, ReadView } from './view.js'

type SnapshotInode = InodeFields & { ino: number }

export class SnapshotView implements ReadView {
  readonly record: SnapshotRecord
  private readonly store: Store
  /** Reads the store at the snapshot's generation. */
  readonly reader: SnapshotReader
  private readonly cache: PageCache
  private readonly inodes = new Map<number, SnapshotInode>()
  private readonly dirs = new Map<number, Map<string, DirentRecord>>()
  private readonly xattrs = new Map<number, Map<string, Buffer>>()
  private readonly touched: () => void
  private stale = false

  /** `touched` is told whenever blocks were read through the store's map (see Store.releaseMap). */
  constructor (store: Store, vol: number, record: SnapshotRecord, cacheBytes: number, touched: () => void) {
    this.store = store
    this.record = record
    this.reader = new SnapshotReader(store, vol, record.gen)
    this.touched = touched
    this.cache = new PageCache(store.blockSize, cacheBytes, {
      read: (ino, index, into) => this.readStoredBlock(ino, index, into),
      prefetch: (ino, indexes) => this.prefetchBlocks(ino, indexes)
    })
  }

  /** The snapshot is going away: answer ESTALE from now on. */
  invalidate (): void {
    this.stale = true
    this.dropPages()
  }

  /** Lets go of the cached data (the view stays usable and reads it again when asked). */
  dropPages (): void {
    this.cache.dropAll()
  }

  inode (ino: number): SnapshotInode {
    if (this.stale) fail('ESTALE', `snapshot ${this.record.name} is being deleted`)
    let inode = this.inodes.get(ino)
    if (inode !== undefined) return inode
    const record = this.reader.inode(ino)
    if (record === undefined) fail('ENOENT', `inode ${ino} in snapshot ${this.record.name}`)
    const { b: _birth, ...fields } = record
    inode = { ...fields, ino }
    this.inodes.set(ino, inode)
    return inode
  }

  getattr (ino: number): Attr {
    return attrOf(this.inode(ino), this.store.blockSize)
  }

  lookup (parent: number, name: string): SnapshotInode {
    const entry = this.entries(parent).get(name)
    if (entry === undefined) fail('ENOENT', name)
    return this.inode(entry.ino)
  }

  readdir (ino: number): DirEntry[] {
    const list: DirEntry[] = []
    for (const [name, entry] of this.entries(ino)) list.push({ name, ino: entry.ino, type: entry.type })
    return list
  }

  readlink (ino: number): string {
    const inode = this.inode(ino)
    if (!isLink(inode.mode) || inode.target === undefined) fail('EINVAL', `inode ${ino} is not a symlink`)
    return inode.target
  }

  getxattr (ino: number, name: string): Buffer {
    const value = this.xattrsOf(ino).get(name)
    if (value === undefined) fail('ENODATA', name)
    return value
  }

  listxattr (ino: number): string[] {
    return [...this.xattrsOf(ino).keys()]
  }

  open (ino: number): SnapshotInode {
    return this.inode(ino)
  }

  close (_ino: number): void {}

  read (ino: number, offset: number, length: number, into: Buffer): number {
    return this.readSlices(ino, offset, length, slices => copySlices(slices, into))
  }

  readSlices (ino: number, offset: number, length: number, send: (slices: Buffer[]) => void): number {
    const inode = this.inode(ino)
    if (isDir(inode.mode)) fail('EISDIR', `inode ${ino}`)
    return this.cache.readSlices(ino, inode.size, offset, length, send)
  }

  private entries (ino: number): Map<string, DirentRecord> {
    let entries = this.dirs.get(ino)
    if (entries !== undefined && !this.stale) return entries
    const dir = this.inode(ino)
    if (!isDir(dir.mode)) fail('ENOTDIR', `inode ${ino}`)
    entries = this.reader.dirents(ino)
    this.dirs.set(ino, entries)
    return entries
  }

  private xattrsOf (ino: number): Map<string, Buffer> {
    this.inode(ino)
    let attrs = this.xattrs.get(ino)
    if (attrs === undefined) {
      attrs = this.reader.xattrs(ino)
      this.xattrs.set(ino, attrs)
    }
    return attrs
  }

  private readStoredBlock (ino: number, index: number, into: Buffer): boolean {
    const map = this.reader.block(ino, index)
    if (map === undefined) return false
    this.touched()
    this.store.readBlock(map.block, into, `inode ${ino} in snapshot ${this.record.name}`)
    return true
  }

  private prefetchBlocks (ino: number, indexes: number[]): void {
    const blocks: number[] = []
    for (const index of indexes) {
      const map = this.reader.block(ino, index)
      if (map !== undefined) blocks.push(map.block)
    }
    this.store.prefetchBlocks(blocks)
  }
}
