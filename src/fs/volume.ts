/**
 * The live view of a volume: POSIX semantics over inode numbers, read-write. It owns the in-memory
 * metadata (inodes, directories, xattrs, loaded from the store on first use and kept while the
 * daemon runs), the pending change set, and the page cache through which all file data passes.
 *
 * Invariants:
 * - Memory is authoritative: every change is made here first and recorded in `changes`; commit.ts
 *   writes it to the store later. Nothing here writes to LMDB.
 * - An inode stays in memory while it has links or open handles; with neither it is deleted
 *   (blocks, xattrs, record) by the next commit. One unlinked while open is an orphan in the store,
 *   so a crash before its last close still frees it at the next mount.
 * - Every inode knows the directory of its newest name (`parent`): for a directory its only one,
 *   and a rename never makes a directory its own ancestor.
 *
 * Durability: `flush` returns once everything changed so far is committed to the store file;
 * `fsync` once it is also flushed to disk.
 */
import createDebug from 'debug'
import { fail } from '../errors.js'
import { NAME_MAX, bmapKey, decodeBmap, decodeInodeKey, inodeKey, nameOfKey, prefixRange, volumePrefix } from '../store/keys.js'
import { ROOT_INO, type DirentRecord, type InodeRecord, type TimeNanos, type VolumeRecord, type XattrRecord } from '../store/records.js'
import { INODE_RESERVE, type Store } from '../store/store.js'
import { RollbackOverlay } from '../store/rollback.js'
import { copySlices, PageCache } from '../cache/pagecache.js'
import { ChangeSet, type Share } from './changes.js'
import { S_IFDIR, S_IFLNK, S_IFMT, S_IFREG, attrOf, isDir, isLink, isReg, setTime, type Attr, type Inode, type InodeFields } from './inode.js'
import { Writeback } from './writeback.js'

const debug = createDebug('snapfs:fs')

/** Largest file size: block indexes must stay exact in the 64-bit keys and JS numbers. */
const MAX_FILE_SIZE = 2 ** 50
/** Longest symlink target (PATH_MAX). */
const MAX_TARGET = 4096
/** Largest xattr value (the Linux limit). */
const MAX_XATTR_VALUE = 65536
const MAX_LINKS = 65000
/** atime is updated on read only when older than mtime/ctime or than this (relatime). */
const RELATIME_MS = 24 * 3600 * 1000

export interface VolumeOptions {
  /** Page cache bound in bytes. */
  cacheBytes: number
  /** Longest time a change may wait in memory before a commit, in ms. */
  dirtyAgeMs: number
}

/** The owner new inodes get (fuse-native does not pass the caller's credentials). */
export interface Owner { uid: number, gid: number }

/** Attribute changes for setattr; absent fields stay as they are. */
export interface AttrChange {
  mode?: number
  uid?: number
  gid?: number
  size?: number
  /** Milliseconds since the epoch, and nanoseconds within the millisecond. */
  atime?: number
  atimeNs?: number
  mtime?: number
  mtimeNs?: number
  /** Set by a transport whose kernel keeps the times of cached writes (default: now). */
  ctime?: number
  ctimeNs?: number
}

export class LiveVolume {
  readonly store: Store
  readonly record: VolumeRecord
  readonly cache: PageCache
  readonly writeback: Writeback
  readonly blockSize: number
  changes = new ChangeSet()
  /** Whether blocks were read or written through the store's map since it was last released. */
  mapTouched = false
  /** Truncations whose commit is under way, per commit sequence: reads must not see the blocks they drop. */
  readonly truncationsInFlight = new Map<number, Map<number, number>>()
  private readonly inodes = new Map<number, Inode>()
  private readonly dirs = new Map<number, Map<string, DirentRecord>>()
  private readonly xattrs = new Map<number, Map<string, Buffer>>()
  /**
   * Next inode number to hand out. `record.nextIno` is the saved reservation ceiling: numbers
   * below it may be in use, so a restart continues from the ceiling.
   */
  private nextIno: number
  /** Inodes that exist: counted from the store at start, then kept up to date. */
  private liveInodes: number
  /**
   * Counts rollbacks: a file handle opened before the latest one refers to a file that may no
   * longer be what its name shows, so the adapter answers ESTALE for it.
   */
  epoch = 0
  /** Restored files whose shared blocks are not in the store yet: reads take them from the snapshot. */
  readonly pendingShares = new Map<number, Share>()
  /** Told when a read moved an access time: a transport whose kernel caches attributes drops them. */
  atimeChanged: ((ino: number) => void) | null = null
  /** While a rollback sets records back: what the records it has not reached read as. */
  private overlay: RollbackOverlay | null
  /** Set while a snapshot is being frozen: writes wait for it. */
  private writesHeld: Promise<void> | null = null

  constructor (store: Store, record: VolumeRecord, options: VolumeOptions) {
    this.store = store
    this.record = record
    this.blockSize = store.blockSize
    this.cache = new PageCache(this.blockSize, options.cacheBytes, {
      read: (ino, index, into) => this.readStoredBlock(ino, index, into),
      prefetch: (ino, indexes) => this.prefetchBlocks(ino, indexes)
    })
    this.writeback = new Writeback(this, options.dirtyAgeMs)
    this.nextIno = record.nextIno
    this.liveInodes = store.inodes.getKeysCount(prefixRange(volumePrefix(record.id)))
    this.overlay = overlayOf(store, record)
  }

  /** Deletes inodes left unlinked-but-open by a daemon that died; call once after opening. */
  async recoverOrphans (): Promise<number> {
    const orphans = [...this.store.orphans.getKeys(prefixRange(volumePrefix(this.record.id)))]
    for (const key of orphans) {
      const { ino } = decodeInodeKey(key as Buffer)
      this.inode(ino)
      this.liveInodes--
      this.changes.removed.add(ino)
      this.changes.orphans.set(ino, false)
      this.changes.touch(Date.now())
    }
    if (orphans.length > 0) {
      await this.writeback.commit()
      debug('freed %d orphans', orphans.length)
    }
    return orphans.length
  }

  // ---- lookups ------------------------------------------------------------------------------

  /** The inode `ino`; ENOENT if it does not exist. */
  inode (ino: number): Inode {
    let inode = this.inodes.get(ino)
    if (inode !== undefined) return inode
    const pending = this.overlay?.inode(ino)
    const record = pending !== undefined ? pending.value : this.store.inodes.get(inodeKey(this.record.id, ino)) as InodeRecord | undefined
    if (record === undefined || this.changes.removed.has(ino)) fail('ENOENT', `inode ${ino}`)
    const { b: _birth, ...fields } = record
    inode = { ...fields, ino, opens: 0 }
    this.inodes.set(ino, inode)
    return inode
  }

  getattr (ino: number): Attr {
    return attrOf(this.inode(ino), this.blockSize)
  }

  /** The inode named `name` in directory `parent`; ENOENT/ENOTDIR otherwise. */
  lookup (parent: number, name: string): Inode {
    const entry = this.entries(parent).get(name)
    if (entry === undefined) fail('ENOENT', name)
    return this.inode(entry.ino)
  }

  /** The entries of a directory, loaded from the store the first time. */
  entries (ino: number): Map<string, DirentRecord> {
    let entries = this.dirs.get(ino)
    if (entries !== undefined) return entries
    const dir = this.inode(ino)
    if (!isDir(dir.mode)) fail('ENOTDIR', `inode ${ino}`)
    entries = new Map()
    for (const { key, value } of this.store.dirents.getRange(prefixRange(inodeKey(this.record.id, ino)))) {
      entries.set(nameOfKey(key).toString('utf8'), value as DirentRecord)
    }
    this.overlay?.dirents(ino, entries)
    this.dirs.set(ino, entries)
    return entries
  }

  readdir (ino: number): Array<{ name: string, ino: number, type: number }> {
    const list: Array<{ name: string, ino: number, type: number }> = []
    for (const [name, entry] of this.entries(ino)) list.push({ name, ino: entry.ino, type: entry.type })
    return list
  }

  readlink (ino: number): string {
    const inode = this.inode(ino)
    if (!isLink(inode.mode) || inode.target === undefined) fail('EINVAL', `inode ${ino} is not a symlink`)
    return inode.target
  }

  // ---- namespace changes --------------------------------------------------------------------

  /** Creates a regular file, fifo, socket or device node. */
  mknod (parent: number, name: string, mode: number, rdev: number, owner: Owner): Inode {
    const type = mode & S_IFMT
    return this.createInode(parent, name, type === 0 ? (mode | S_IFREG) : mode, rdev, owner)
  }

  mkdir (parent: number, name: string, mode: number, owner: Owner): Inode {
    const inode = this.createInode(parent, name, (mode & 0o7777) | S_IFDIR, 0, owner)
    this.dirs.set(inode.ino, new Map())
    return inode
  }

  symlink (parent: number, name: string, target: string, owner: Owner): Inode {
    if (Buffer.byteLength(target) > MAX_TARGET) fail('ENAMETOOLONG', 'symlink target')
    return this.createInode(parent, name, S_IFLNK | 0o777, 0, owner, target)
  }

  link (ino: number, parent: number, name: string): Inode {
    const inode = this.inode(ino)
    if (isDir(inode.mode)) fail('EPERM', 'hard link to a directory')
    if (inode.nlink === 0) fail('ENOENT', 'link to a deleted file')
    if (inode.nlink >= MAX_LINKS) fail('EMLINK', name)
    const now = Date.now()
    this.addEntry(parent, name, inode, now)
    inode.nlink++
    inode.parent = parent
    setTime(inode, 'ctime', now)
    this.dirtyInode(inode, now)
    return inode
  }

  unlink (parent: number, name: string): void {
    const inode = this.lookup(parent, name)
    if (isDir(inode.mode)) fail('EISDIR', name)
    const now = Date.now()
    this.removeEntry(parent, name, now)
    this.dropLink(inode, now)
  }

  rmdir (parent: number, name: string): void {
    if (name === '.') fail('EINVAL', 'rmdir .')
    const inode = this.lookup(parent, name)
    if (!isDir(inode.mode)) fail('ENOTDIR', name)
    if (this.entries(inode.ino).size > 0) fail('ENOTEMPTY', name)
    this.removeEmptyDir(parent, name, inode, Date.now())
  }

  /** rename(2) without flags: atomic, replacing a compatible target. */
  rename (oldParent: number, oldName: string, newParent: number, newName: string): void {
    checkName(newName)
    const inode = this.lookup(oldParent, oldName)
    const targetEntry = this.entries(newParent).get(newName)
    if (targetEntry !== undefined && targetEntry.ino === inode.ino) return
    const movingDir = isDir(inode.mode)
    if (movingDir && newParent !== oldParent && this.isAncestor(inode.ino, newParent)) {
      fail('EINVAL', `cannot move a directory into itself: ${oldName}`)
    }
    const now = Date.now()
    if (targetEntry !== undefined) {
      const target = this.inode(targetEntry.ino)
      if (movingDir && !isDir(target.mode)) fail('ENOTDIR', newName)
      if (!movingDir && isDir(target.mode)) fail('EISDIR', newName)
      if (isDir(target.mode)) {
        if (this.entries(target.ino).size > 0) fail('ENOTEMPTY', newName)
        this.removeEmptyDir(newParent, newName, target, now)
      } else {
        this.removeEntry(newParent, newName, now)
        this.dropLink(target, now)
      }
    }
    this.removeEntry(oldParent, oldName, now)
    this.addEntry(newParent, newName, inode, now)
    inode.parent = newParent
    if (movingDir && oldParent !== newParent) this.moveSubdirLink(oldParent, newParent, now)
    setTime(inode, 'ctime', now)
    this.dirtyInode(inode, now)
  }

  /** rename(2) with RENAME_EXCHANGE: the two names swap their inodes, atomically. */
  exchange (parentA: number, nameA: string, parentB: number, nameB: string): void {
    const a = this.lookup(parentA, nameA)
    const b = this.lookup(parentB, nameB)
    if (a.ino === b.ino) return
    if (parentA !== parentB) {
      if (isDir(a.mode) && this.isAncestor(a.ino, parentB)) fail('EINVAL', `cannot move a directory into itself: ${nameA}`)
      if (isDir(b.mode) && this.isAncestor(b.ino, parentA)) fail('EINVAL', `cannot move a directory into itself: ${nameB}`)
    }
    const now = Date.now()
    this.removeEntry(parentA, nameA, now)
    this.removeEntry(parentB, nameB, now)
    this.addEntry(parentA, nameA, b, now)
    this.addEntry(parentB, nameB, a, now)
    a.parent = parentB
    b.parent = parentA
    if (parentA !== parentB && isDir(a.mode) !== isDir(b.mode)) {
      if (isDir(a.mode)) this.moveSubdirLink(parentA, parentB, now)
      else this.moveSubdirLink(parentB, parentA, now)
    }
    for (const inode of [a, b]) {
      setTime(inode, 'ctime', now)
      this.dirtyInode(inode, now)
    }
  }

  /**
   * Creates a copy of a snapshot's inode (restore): the same type, mode, owner, times, size,
   * target and xattrs, with a new number, named `name` in `parent`. A regular file shares the
   * snapshot file's blocks (`share`) instead of copying its data.
   */
  restoreInode (parent: number, name: string, record: InodeFields, xattrs: Map<string, Buffer>, share: Share | null): Inode {
    const inode = this.createInode(parent, name, record.mode, record.rdev, { uid: record.uid, gid: record.gid }, record.target)
    if (isDir(inode.mode)) this.dirs.set(inode.ino, new Map())
    const now = Date.now()
    inode.size = record.size
    this.restoreTimes(inode.ino, record)
    if (share !== null) {
      inode.blocks = record.blocks
      this.changes.shares.set(inode.ino, share)
      this.pendingShares.set(inode.ino, share)
    }
    if (xattrs.size > 0) {
      const attrs = this.xattrsOf(inode.ino)
      for (const [key, value] of xattrs) {
        attrs.set(key, value)
        this.changes.setXattr(inode.ino, key, value, now)
      }
    }
    return inode
  }

  /** Sets an inode's times as a snapshot had them (a restored directory, once it is filled). */
  restoreTimes (ino: number, record: { atime: number, mtime: number, ctime: number, ns?: TimeNanos }): void {
    const inode = this.inode(ino)
    setTime(inode, 'atime', record.atime, record.ns?.a)
    setTime(inode, 'mtime', record.mtime, record.ns?.m)
    setTime(inode, 'ctime', record.ctime, record.ns?.c)
    this.dirtyInode(inode, Date.now())
  }

  /** The shares a commit made durable: their blocks are now read from the store. */
  sharesCommitted (shares: Map<number, Share>): void {
    for (const [ino, share] of shares) if (this.pendingShares.get(ino) === share) this.pendingShares.delete(ino)
  }

  // ---- attributes ---------------------------------------------------------------------------

  setattr (ino: number, change: AttrChange): Attr {
    const inode = this.inode(ino)
    const now = Date.now()
    if (change.size !== undefined) this.truncate(inode, change.size, now)
    if (change.mode !== undefined) inode.mode = (inode.mode & S_IFMT) | (change.mode & 0o7777)
    if (change.uid !== undefined && change.uid !== -1 && change.uid !== 0xffffffff) inode.uid = change.uid
    if (change.gid !== undefined && change.gid !== -1 && change.gid !== 0xffffffff) inode.gid = change.gid
    if (change.atime !== undefined) setTime(inode, 'atime', change.atime, change.atimeNs)
    if (change.mtime !== undefined) setTime(inode, 'mtime', change.mtime, change.mtimeNs)
    setTime(inode, 'ctime', change.ctime ?? now, change.ctimeNs)
    this.dirtyInode(inode, now)
    return attrOf(inode, this.blockSize)
  }

  getxattr (ino: number, name: string): Buffer {
    const value = this.xattrsOf(ino).get(name)
    if (value === undefined) fail('ENODATA', name)
    return value
  }

  listxattr (ino: number): string[] {
    return [...this.xattrsOf(ino).keys()]
  }

  /** flags: 1 = XATTR_CREATE (fail if it exists), 2 = XATTR_REPLACE (fail if it does not). */
  setxattr (ino: number, name: string, value: Buffer, flags: number): void {
    if (Buffer.byteLength(name) > NAME_MAX || name.length === 0) fail('ERANGE', 'xattr name')
    if (value.length > MAX_XATTR_VALUE) fail('ERANGE', 'xattr value too large')
    const attrs = this.xattrsOf(ino)
    if ((flags & 1) !== 0 && attrs.has(name)) fail('EEXIST', name)
    if ((flags & 2) !== 0 && !attrs.has(name)) fail('ENODATA', name)
    const now = Date.now()
    const copy = Buffer.from(value)
    attrs.set(name, copy)
    this.changes.setXattr(ino, name, copy, now)
    const inode = this.inode(ino)
    setTime(inode, 'ctime', now)
    this.dirtyInode(inode, now)
  }

  removexattr (ino: number, name: string): void {
    const attrs = this.xattrsOf(ino)
    if (!attrs.delete(name)) fail('ENODATA', name)
    const now = Date.now()
    this.changes.setXattr(ino, name, null, now)
    const inode = this.inode(ino)
    setTime(inode, 'ctime', now)
    this.dirtyInode(inode, now)
  }

  // ---- file data ----------------------------------------------------------------------------

  /** An open handle starts: the inode lives at least until the matching `close`. */
  open (ino: number): Inode {
    const inode = this.inode(ino)
    inode.opens++
    return inode
  }

  /** The last reference of a handle is gone; an unlinked inode with no handles is deleted. */
  close (ino: number): void {
    const inode = this.inodes.get(ino)
    if (inode === undefined) return
    inode.opens = Math.max(0, inode.opens - 1)
    if (inode.opens === 0 && inode.nlink === 0) this.release(inode, Date.now())
  }

  /** Reads up to `length` bytes at `offset` into `into`; returns the count (0 at or past EOF). */
  read (ino: number, offset: number, length: number, into: Buffer): number {
    return this.readSlices(ino, offset, length, slices => copySlices(slices, into))
  }

  /** Like read, handing `send` slices of the cached pages instead (see ReadView.readSlices). */
  readSlices (ino: number, offset: number, length: number, send: (slices: Buffer[]) => void): number {
    const inode = this.inode(ino)
    if (isDir(inode.mode)) fail('EISDIR', `inode ${ino}`)
    const count = this.cache.readSlices(ino, inode.size, offset, length, send)
    if (count === 0) return 0
    const now = Date.now()
    if (inode.atime <= inode.mtime || inode.atime <= inode.ctime || now - inode.atime > RELATIME_MS) {
      setTime(inode, 'atime', now)
      this.changes.accessed.add(ino)
      this.changes.touch(now)
      this.atimeChanged?.(ino)
    }
    return count
  }

  /**
   * Makes writes wait until the returned function is called (a snapshot freezes the block map
   * meanwhile). Other changes go on: they are part of whichever commit takes them.
   */
  holdWrites (): () => void {
    let release = (): void => {}
    const held = new Promise<void>(resolve => { release = resolve })
    this.writesHeld = held
    return () => {
      if (this.writesHeld === held) this.writesHeld = null
      release()
    }
  }

  /**
   * Whether a write now would wait (writes held for a snapshot, or a cache full of dirty pages)
   * before it copies its data: a caller whose buffer is only lent for the call must copy it then.
   */
  get writesWait (): boolean {
    return this.writesHeld !== null || this.cache.isFull()
  }

  /**
   * Writes `data` at `offset`; waits for write-back first when the page cache is full. Unless
   * `writesWait`, the data is copied before this first yields. The file's mtime and ctime become
   * now, unless `kernelTimes`: the kernel's writeback cache keeps the times of the writes it
   * caches, and sends them as a setattr before the flush; the moment it passes the pages on is
   * not the moment they were written.
   */
  async write (ino: number, offset: number, data: Buffer, kernelTimes = false): Promise<number> {
    while (this.writesHeld !== null) await this.writesHeld
    const inode = this.inode(ino)
    if (!isReg(inode.mode)) fail('EINVAL', `inode ${ino} is not a regular file`)
    const end = offset + data.length
    if (end > MAX_FILE_SIZE) fail('EFBIG', `offset ${end}`)
    const bs = this.blockSize
    const pages = Math.floor((end - 1) / bs) - Math.floor(offset / bs) + 1
    while (this.cache.isFull()) await this.writeback.step()
    if (pages > 1 && this.cache.residentPages + pages > this.cache.maxPages) this.cache.evict(pages)
    const now = Date.now()
    let pos = offset
    while (pos < end) {
      const index = Math.floor(pos / bs)
      const within = pos - index * bs
      const count = Math.min(bs - within, end - pos)
      const page = this.cache.write(ino, index, index * bs >= inode.size ? 'zeros' : 'stored', within, within + count)
      data.copy(page.data, within, pos - offset, pos - offset + count)
      this.cache.markDirty(page, now)
      pos += count
    }
    if (end > inode.size) inode.size = end
    if (!kernelTimes) {
      setTime(inode, 'mtime', now)
      setTime(inode, 'ctime', now)
    }
    this.dirtyInode(inode, now)
    this.writeback.afterWrite()
    return data.length
  }

  /**
   * Everything changed so far is committed to the store file when this resolves. With `ino`
   * (a close), only when that inode has changes of its own: closing a file that was only read
   * does not wait for other writers' commits.
   */
  async flush (ino?: number): Promise<void> {
    if (ino !== undefined && !this.changes.inodes.has(ino) && this.cache.dirtyPagesOf(ino) === 0) return
    await this.writeback.commit()
  }

  /** Everything changed so far is durable on disk when this resolves. */
  async fsync (): Promise<void> {
    await this.writeback.commit(true)
    this.store.flushed()
  }

  /** Open handles on live files (a rollback refuses to run under them unless forced). */
  openHandles (): number {
    let count = 0
    for (const inode of this.inodes.values()) count += inode.opens
    return count
  }

  /**
   * Forgets everything held in memory and reads the volume from the store again: after a
   * rollback changed the store under it. Call only when nothing is waiting for a commit.
   */
  reload (): void {
    if (!this.clean) throw new Error('reload with uncommitted changes')
    this.inodes.clear()
    this.dirs.clear()
    this.xattrs.clear()
    this.pendingShares.clear()
    this.cache.dropAll()
    this.liveInodes = this.store.inodes.getKeysCount(prefixRange(volumePrefix(this.record.id)))
    this.overlay = overlayOf(this.store, this.record)
    this.epoch++
  }

  /** Reads the store's heads alone again once a rollback has set back every record. */
  rollbackDone (): void {
    this.overlay = null
    this.liveInodes = this.store.inodes.getKeysCount(prefixRange(volumePrefix(this.record.id)))
  }

  /** The volume record changed in memory (fs/snapshots.ts keeps state there): the next commit saves it. */
  recordChanged (): void {
    this.changes.volume = true
    this.changes.touch(Date.now())
  }

  /** Inodes in the volume (statfs reports it as files in use). */
  inodeCount (): number {
    return this.liveInodes
  }

  /** Whether nothing is waiting in memory for a commit. */
  get clean (): boolean {
    return this.changes.empty && this.cache.dirtyPages === 0
  }

  /** The in-memory inode, if loaded (used by the writer for records to save). */
  loaded (ino: number): Inode | undefined {
    return this.inodes.get(ino)
  }

  /** Forgets an inode deleted by a commit. */
  forget (ino: number): void {
    this.inodes.delete(ino)
    this.xattrs.delete(ino)
    this.pendingShares.delete(ino)
  }

  // ---- internals ----------------------------------------------------------------------------

  private createInode (parent: number, name: string, mode: number, rdev: number, owner: Owner, target?: string): Inode {
    checkName(name)
    const dir = this.inode(parent)
    if (!isDir(dir.mode)) fail('ENOTDIR', `inode ${parent}`)
    if (dir.nlink === 0) fail('ENOENT', 'directory was removed')
    if (this.entries(parent).has(name)) fail('EEXIST', name)
    const now = Date.now()
    const ino = this.nextIno++
    if (this.nextIno > this.record.nextIno) {
      this.record.nextIno = ino + INODE_RESERVE
      this.changes.volume = true
    }
    const inode: Inode = {
      ino,
      mode,
      uid: owner.uid,
      gid: owner.gid,
      size: target === undefined ? 0 : Buffer.byteLength(target),
      nlink: isDir(mode) ? 2 : 1,
      atime: now,
      mtime: now,
      ctime: now,
      rdev,
      blocks: 0,
      opens: 0
    }
    if (target !== undefined) inode.target = target
    inode.parent = parent
    if (isDir(mode)) dir.nlink++
    this.inodes.set(ino, inode)
    this.liveInodes++
    this.dirtyInode(inode, now)
    this.addEntry(parent, name, inode, now)
    return inode
  }

  private addEntry (parent: number, name: string, inode: Inode, now: number): void {
    checkName(name)
    const entries = this.entries(parent)
    if (entries.has(name)) fail('EEXIST', name)
    const entry = { b: 0, ino: inode.ino, type: inode.mode & S_IFMT }
    entries.set(name, entry)
    this.changes.setDirent(parent, name, { ino: entry.ino, type: entry.type }, now)
    const dir = this.inode(parent)
    setTime(dir, 'mtime', now)
    setTime(dir, 'ctime', now)
    this.dirtyInode(dir, now)
  }

  private removeEntry (parent: number, name: string, now: number): void {
    this.entries(parent).delete(name)
    this.changes.setDirent(parent, name, null, now)
    const dir = this.inode(parent)
    setTime(dir, 'mtime', now)
    setTime(dir, 'ctime', now)
    this.dirtyInode(dir, now)
  }

  /** Removes the entry of an empty directory and the directory itself. */
  private removeEmptyDir (parent: number, name: string, dir: Inode, now: number): void {
    this.removeEntry(parent, name, now)
    const parentDir = this.inode(parent)
    parentDir.nlink--
    this.dirtyInode(parentDir, now)
    dir.nlink = 0
    this.dirs.delete(dir.ino)
    this.release(dir, now)
  }

  /** A subdirectory moved from directory `from` to `to`: its `..` link moves with it. */
  private moveSubdirLink (from: number, to: number, now: number): void {
    const fromDir = this.inode(from)
    const toDir = this.inode(to)
    fromDir.nlink--
    toDir.nlink++
    this.dirtyInode(fromDir, now)
    this.dirtyInode(toDir, now)
  }

  private dropLink (inode: Inode, now: number): void {
    inode.nlink--
    setTime(inode, 'ctime', now)
    this.dirtyInode(inode, now)
    if (inode.nlink === 0) this.release(inode, now)
  }

  /** An inode lost its last link: delete it now, or mark it an orphan until its last close. */
  private release (inode: Inode, now: number): void {
    if (inode.opens > 0) {
      this.changes.orphans.set(inode.ino, true)
      this.dirtyInode(inode, now)
      return
    }
    this.cache.dropFrom(inode.ino, 0)
    if (!this.changes.removed.has(inode.ino)) this.liveInodes--
    this.changes.removed.add(inode.ino)
    this.changes.inodes.delete(inode.ino)
    this.changes.accessed.delete(inode.ino)
    this.changes.truncations.delete(inode.ino)
    this.changes.xattrs.delete(inode.ino)
    if (this.changes.orphans.get(inode.ino) === true) this.changes.orphans.delete(inode.ino)
    else this.changes.orphans.set(inode.ino, false)
    this.changes.touch(now)
    this.writeback.freed()
  }

  private truncate (inode: Inode, size: number, now: number): void {
    if (isDir(inode.mode)) fail('EISDIR', `inode ${inode.ino}`)
    if (!isReg(inode.mode)) fail('EINVAL', `inode ${inode.ino} is not a regular file`)
    if (size < 0) fail('EINVAL', `size ${size}`)
    if (size > MAX_FILE_SIZE) fail('EFBIG', `size ${size}`)
    if (size < inode.size) {
      const bs = this.blockSize
      const keep = Math.ceil(size / bs)
      this.cache.dropFrom(inode.ino, keep)
      this.changes.truncate(inode.ino, keep, now)
      const within = size % bs
      if (within !== 0) {
        const page = this.cache.write(inode.ino, keep - 1, 'stored', within, bs)
        page.data.fill(0, within)
        this.cache.markDirty(page, now)
      }
    }
    inode.size = size
    setTime(inode, 'mtime', now)
  }

  private isAncestor (dir: number, of: number): boolean {
    let cursor = of
    for (let depth = 0; depth < 100000; depth++) {
      if (cursor === dir) return true
      if (cursor === ROOT_INO) return false
      const parent = this.inode(cursor).parent
      if (parent === undefined || parent === cursor) return false
      cursor = parent
    }
    return false
  }

  private dirtyInode (inode: Inode, now: number): void {
    this.changes.inodes.add(inode.ino)
    this.changes.touch(now)
  }

  private xattrsOf (ino: number): Map<string, Buffer> {
    let attrs = this.xattrs.get(ino)
    if (attrs !== undefined) return attrs
    this.inode(ino)
    attrs = new Map()
    for (const { key, value } of this.store.xattrs.getRange(prefixRange(inodeKey(this.record.id, ino)))) {
      attrs.set(nameOfKey(key).toString('utf8'), (value as XattrRecord).v)
    }
    this.overlay?.xattrs(ino, attrs)
    this.xattrs.set(ino, attrs)
    return attrs
  }

  /** True when a truncate not yet visible in the store has made block `index` a hole. */
  private truncatedAway (ino: number, index: number): boolean {
    const pending = this.changes.truncations.get(ino)
    if (pending !== undefined && index >= pending) return true
    for (const truncations of this.truncationsInFlight.values()) {
      const from = truncations.get(ino)
      if (from !== undefined && index >= from) return true
    }
    return false
  }

  private readStoredBlock (ino: number, index: number, into: Buffer): boolean {
    if (this.truncatedAway(ino, index)) return false
    const block = this.storedBlock(ino, index)
    if (block === undefined) return false
    this.mapTouched = true
    this.store.readBlock(block, into, `inode ${ino}`)
    return true
  }

  /** The block holding block `index` of an inode, from its block map or a pending share. */
  private storedBlock (ino: number, index: number): number | undefined {
    const share = this.pendingShares.get(ino)
    if (share !== undefined) return share.reader.block(share.ino, index)?.block
    const pending = this.overlay?.block(ino, index)
    if (pending !== undefined) return pending.value?.block
    const raw = this.store.bmap.get(bmapKey(this.record.id, ino, index))
    return raw === undefined ? undefined : decodeBmap(raw).block
  }

  private prefetchBlocks (ino: number, indexes: number[]): void {
    const blocks: number[] = []
    for (const index of indexes) {
      const block = this.storedBlock(ino, index)
      if (block !== undefined) blocks.push(block)
    }
    this.store.prefetchBlocks(blocks)
  }
}

/** The overlay of a volume whose rollback is in its apply phase, else null. */
function overlayOf (store: Store, record: VolumeRecord): RollbackOverlay | null {
  return record.rollback?.phase === 'apply' ? new RollbackOverlay(store, record.id, record.rollback.gen) : null
}

function checkName (name: string): void {
  if (name.length === 0 || name === '.' || name === '..' || name.includes('/')) fail('EINVAL', `invalid name "${name}"`)
  if (Buffer.byteLength(name) > NAME_MAX) fail('ENAMETOOLONG', `name of ${Buffer.byteLength(name)} bytes`)
}

