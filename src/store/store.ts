/**
 * The store: one LMDB environment in a directory, holding every volume's records and the shared
 * data blocks (key schema in keys.ts). This module opens and creates stores, checks their format,
 * and hands out the databases; it knows nothing of paths, FUSE or the page cache.
 *
 * Durability: LMDB transactions are the only way state changes on disk. A write is `committed`
 * once its transaction is visible in the store file, and `flushed` once it is on disk. A
 * synchronous transaction is flushed when it returns (LMDB syncs before it writes the meta page),
 * unless `commitSync` was told it need only be committed; one on lmdb-js's writer thread is
 * committed first and flushed a moment later by that thread. `flushed()` makes sure of both with
 * a small synchronous transaction, which cannot finish before the writer thread's sync: lmdb-js's
 * own `flushed` promise never settles again once a commit has failed (a full disk), so it is not
 * used. Stores are safe to share between
 * processes; one process must open a store only once (LMDB refuses a second environment in one
 * process).
 */
import fs from 'node:fs'
import path from 'node:path'
import { open, TransactionFlags, type Database, type RootDatabase } from 'lmdb'
import createDebug from 'debug'
import { FsError, UserError } from '../errors.js'
import { ROOT_INO, type FormatRecord, type InodeRecord, type SnapshotRecord, type VolumeRecord } from './records.js'
import { Table, birthKey, blockKey, decodeBmap, decodeInodeKey, inodeKey, sectorsOf } from './keys.js'
import { releaseFileMappings } from '../native.js'

const debug = createDebug('snapfs:store')

/**
 * The on-disk format this code reads and writes. Bump it when a key or value layout changes.
 * v2 added the snapshot catalogue and the volume's space counters; a v1 store is upgraded when
 * opened (one scan of its block maps). v3 added `pending`, the to-do list of a rollback that runs
 * in the background: a v2 program would read a volume in the middle of one as if it were whole.
 */
export const FORMAT_VERSION = 3

/** lmdb-js's flags of a synchronous transaction: abortable, committed before it returns. */
const SYNC_TRANSACTION = TransactionFlags.ABORTABLE | TransactionFlags.SYNCHRONOUS_COMMIT

/** LMDB's MDB_NOMETASYNC: a commit syncs the pages it wrote and writes its meta page unsynced. */
const NO_META_SYNC = 0x40000

/** Default data block size: a 64 KiB value costs 17 LMDB pages (6 % overhead, DESIGN.md). */
export const DEFAULT_BLOCK_SIZE = 64 * 1024

/** Free space on the store's disk below which a failed commit is reported as ENOSPC. */
const LOW_SPACE_BYTES = 64 * 1024 * 1024

/** Block ids reserved at a time (see Store.blockCeiling). */
export const BLOCK_RESERVE = 4096

/** Inode numbers reserved at a time (see LiveVolume). */
export const INODE_RESERVE = 1024

/** Name of the volume every store starts with. */
export const DEFAULT_VOLUME = 'main'

const DATA_FILE = 'data.mdb'

type BinaryDb = Database<Buffer, Buffer>

export interface InitOptions {
  blockSize?: number
}

export class Store {
  readonly dir: string
  readonly root: RootDatabase
  readonly meta: Database<any, string>
  readonly volumes: Database<VolumeRecord, number>
  readonly inodes: Database<InodeRecord, Buffer>
  readonly dirents: Database<any, Buffer>
  readonly xattrs: Database<any, Buffer>
  readonly history: Database<any, Buffer>
  readonly bmap: BinaryDb
  readonly blocks: BinaryDb
  readonly refs: BinaryDb
  readonly orphans: BinaryDb
  readonly deadlist: BinaryDb
  readonly births: BinaryDb
  readonly snapshots: Database<SnapshotRecord, Buffer>
  readonly pending: BinaryDb
  readonly format: FormatRecord
  /** Next block id to hand out. */
  nextBlock: number
  private mapReleaseUnavailable = false
  /**
   * Block ids below this are reserved for this process (the store saves the end of the newest
   * reservation as "nextBlock"); a commit that needs an id past it reserves BLOCK_RESERVE more,
   * so most commits need not rewrite the counter. Ids reserved but never used are skipped.
   */
  blockCeiling: number

  private constructor (dir: string, root: RootDatabase) {
    this.dir = dir
    this.root = root
    this.meta = root.openDB({ name: 'meta', encoding: 'msgpack' })
    this.volumes = root.openDB({ name: 'volumes', keyEncoding: 'uint32', encoding: 'msgpack' })
    const records = { keyEncoding: 'binary' as const, encoding: 'msgpack' as const }
    const raw = { keyEncoding: 'binary' as const, encoding: 'binary' as const }
    this.inodes = root.openDB({ name: 'inodes', ...records })
    this.dirents = root.openDB({ name: 'dirents', ...records })
    this.xattrs = root.openDB({ name: 'xattrs', ...records })
    this.history = root.openDB({ name: 'history', ...records })
    this.bmap = root.openDB({ name: 'bmap', ...raw })
    this.blocks = root.openDB({ name: 'blocks', ...raw })
    this.refs = root.openDB({ name: 'refs', ...raw })
    this.orphans = root.openDB({ name: 'orphans', ...raw })
    this.deadlist = root.openDB({ name: 'deadlist', ...raw })
    this.births = root.openDB({ name: 'births', ...raw })
    this.snapshots = root.openDB({ name: 'snapshots', ...records })
    this.pending = root.openDB({ name: 'pending', ...raw })
    const format = this.meta.get('format') as FormatRecord | undefined
    if (format === undefined || format.magic !== 'snapfs') {
      root.close()
      throw new UserError(`${dir} is not a snapfs store (no format record)`)
    }
    if (format.version > FORMAT_VERSION) {
      root.close()
      throw new UserError(`${dir} has store format v${format.version}, newer than this snapfs (reads up to v${FORMAT_VERSION}); upgrade snapfs`)
    }
    if (format.version < 1 || !Number.isInteger(format.blockSize) || format.blockSize < 4096) {
      root.close()
      throw new UserError(`${dir} has a corrupt format record`)
    }
    if (format.version < FORMAT_VERSION) this.upgrade(format)
    this.format = format
    this.nextBlock = (this.meta.get('nextBlock') as number | undefined) ?? 1
    this.blockCeiling = this.nextBlock
  }

  /** The block size of this store, in bytes. */
  get blockSize (): number {
    return this.format.blockSize
  }

  /** Opens an existing store; a missing directory, a non-store or a newer format is a UserError. */
  static open (dir: string): Store {
    const abs = path.resolve(dir)
    if (!fs.existsSync(abs)) throw new UserError(`store ${abs} does not exist (create it with: snapfs init ${abs})`)
    if (!fs.statSync(abs).isDirectory()) throw new UserError(`${abs} is not a snapfs store (not a directory)`)
    if (!fs.existsSync(path.join(abs, DATA_FILE))) throw new UserError(`${abs} is not a snapfs store (no ${DATA_FILE}; create one with: snapfs init ${abs})`)
    debug('open %s', abs)
    return new Store(abs, openEnvironment(abs))
  }

  /** Creates a store with its first volume; refuses a directory that already holds anything. */
  static async init (dir: string, options: InitOptions = {}): Promise<Store> {
    const abs = path.resolve(dir)
    const blockSize = options.blockSize ?? DEFAULT_BLOCK_SIZE
    if (!Number.isInteger(blockSize) || blockSize < 4096 || blockSize > 1024 * 1024 || (blockSize & (blockSize - 1)) !== 0) {
      throw new UserError(`block size ${blockSize} must be a power of two between 4 KiB and 1 MiB`)
    }
    if (fs.existsSync(abs) && fs.readdirSync(abs).length > 0) {
      if (fs.existsSync(path.join(abs, DATA_FILE))) throw new UserError(`${abs} is already a store`)
      throw new UserError(`${abs} is not empty; a store needs an empty or new directory`)
    }
    fs.mkdirSync(abs, { recursive: true, mode: 0o700 })
    const root = openEnvironment(abs)
    const now = Date.now()
    const format: FormatRecord = { magic: 'snapfs', version: FORMAT_VERSION, blockSize, created: now }
    const meta = root.openDB<any, string>({ name: 'meta', encoding: 'msgpack' })
    const volumes = root.openDB<VolumeRecord, number>({ name: 'volumes', keyEncoding: 'uint32', encoding: 'msgpack' })
    const inodes = root.openDB<InodeRecord, Buffer>({ name: 'inodes', keyEncoding: 'binary', encoding: 'msgpack' })
    const births = root.openDB<Buffer, Buffer>({ name: 'births', keyEncoding: 'binary', encoding: 'binary' })
    const volume = newVolume(1, DEFAULT_VOLUME, now)
    const rootInode: InodeRecord = {
      b: 1, mode: 0o40755, uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0, size: 0, nlink: 2,
      atime: now, mtime: now, ctime: now, rdev: 0, blocks: 0, parent: ROOT_INO
    }
    await root.transaction(() => {
      meta.putSync('format', format)
      meta.putSync('nextBlock', 1)
      meta.putSync('volume:' + DEFAULT_VOLUME, volume.id)
      volumes.putSync(volume.id, volume)
      inodes.putSync(inodeKey(volume.id, ROOT_INO), rootInode)
      births.putSync(birthKey(volume.id, 1, Table.Inode, inodeKey(volume.id, ROOT_INO)), Buffer.alloc(0))
    })
    await root.flushed
    root.close()
    debug('init %s block size %d', abs, blockSize)
    return Store.open(abs)
  }

  /**
   * Upgrades an older store in one transaction. v1 had no snapshots, so every stored block is live
   * data written since the (absent) newest snapshot; v1 did not list the root directory's first
   * version in the births index. v2 lacked only the (empty) pending table.
   */
  private upgrade (format: FormatRecord): void {
    if (format.version >= 2) {
      format.version = FORMAT_VERSION
      this.meta.putSync('format', format)
      debug('upgraded %s to format v%d', this.dir, FORMAT_VERSION)
      return
    }
    const used = new Map<number, number>()
    for (const { key, value } of this.bmap.getRange()) {
      const { vol } = decodeInodeKey(key)
      used.set(vol, (used.get(vol) ?? 0) + sectorsOf(decodeBmap(value).length) * 512)
    }
    this.root.transactionSync(() => {
      for (const { key, value } of [...this.volumes.getRange()]) {
        const bytes = used.get(key) ?? 0
        this.volumes.putSync(key, { ...newVolume(value.id, value.name, value.created), ...value, used: bytes, written: bytes })
        const rootKey = inodeKey(value.id, ROOT_INO)
        const root = this.inodes.get(rootKey)
        if (root !== undefined) this.births.putSync(birthKey(value.id, root.b, Table.Inode, rootKey), Buffer.alloc(0))
      }
      format.version = FORMAT_VERSION
      this.meta.putSync('format', format)
    })
    debug('upgraded %s to format v%d', this.dir, FORMAT_VERSION)
  }

  /**
   * Copies block `block` into `into` (a page), zeros after the bytes it stores; EIO if it is
   * missing. Reads go through the store's map (see releaseMap).
   */
  readBlock (block: number, into: Buffer, what: string): void {
    const stored = this.blocks.getBinaryFast(blockKey(block))
    if (stored === undefined) throw new FsError('EIO', `block ${block} of ${what} is missing`)
    // getBinaryFast hands back a shared buffer whose byteLength exceeds the value: copy by length.
    const length = stored.length
    into.set(stored.subarray(0, length))
    if (length < into.length) into.fill(0, length)
  }

  /** Asks LMDB to bring these blocks into memory in the background. */
  prefetchBlocks (blocks: number[]): void {
    if (blocks.length > 0) this.blocks.prefetch(blocks.map(blockKey), () => {})
  }

  /** The database of the head records of a versioned table. */
  headsOf (table: Table): Database<any, Buffer> {
    return table === Table.Inode ? this.inodes : table === Table.Dirent ? this.dirents : table === Table.Xattr ? this.xattrs : this.bmap
  }

  /** Decodes a record value kept raw in history (encoded by `db`, one of the record databases). */
  decodeRecord<T> (db: Database<any, Buffer>, raw: Buffer): T {
    return (db as unknown as { decoder: { decode: (buf: Buffer) => T } }).decoder.decode(raw)
  }

  /** The volume called `name`, or a UserError listing what exists. */
  volume (name: string): VolumeRecord {
    const id = this.meta.get('volume:' + name) as number | undefined
    const record = id === undefined ? undefined : this.volumes.get(id)
    if (record === undefined) {
      const names = [...this.volumes.getRange()].map(({ value }) => value.name)
      throw new UserError(`no volume "${name}" in ${this.dir} (volumes: ${names.join(', ')})`)
    }
    return record
  }

  /**
   * Releases the process's mappings of the store file: LMDB reads through a memory map, and the
   * pages it touched would otherwise stay counted in the daemon's resident memory. They remain in
   * the kernel's page cache. Without the native addon this does nothing (and says so once).
   */
  releaseMap (): void {
    if (this.mapReleaseUnavailable) return
    try {
      const released = releaseFileMappings(path.join(this.dir, DATA_FILE))
      debug('released %d bytes of map', released)
    } catch (err) {
      this.mapReleaseUnavailable = true
      debug('cannot release the store map: %s', (err as Error).message)
    }
  }

  /**
   * The error to report for a failed commit: ENOSPC when the store's disk is (nearly) full, which
   * LMDB reports only as an I/O error, else EIO. The store is unchanged by a failed commit.
   */
  commitFailure (err: unknown): FsError {
    // lmdb-js also rejects a second promise with the cause; it is reported here, not left unhandled.
    const cause = (err as { commitError?: Promise<unknown> } | null)?.commitError
    if (cause !== undefined) cause.catch(() => {})
    const disk = fs.statfsSync(this.dir)
    const message = err instanceof Error ? err.message : String(err)
    if (disk.bavail * disk.bsize < LOW_SPACE_BYTES) return new FsError('ENOSPC', `the disk of ${this.dir} is full (${message})`)
    return new FsError('EIO', `commit to ${this.dir} failed: ${message}`)
  }

  /**
   * Commits a transaction that changes nothing but the time in meta. LMDB lets a transaction reuse
   * the pages an earlier one freed only once a later one is committed: after a delete on a full
   * disk, this makes the room it freed usable by the next commit.
   */
  advance (): void {
    this.root.transactionSync(() => { this.meta.putSync('flushed', Date.now()) })
  }

  /**
   * Runs `apply` in a synchronous transaction. A `durable` one is flushed when this returns.
   * Otherwise it is committed: LMDB syncs the pages it wrote but not its meta page
   * (MDB_NOMETASYNC), one disk flush instead of two. It survives the daemon's death; a crash of
   * the machine before the next flush may undo it, whole, and never leaves the store damaged.
   */
  commitSync (apply: () => void, durable: boolean): void {
    this.root.transactionSync(apply, durable ? SYNC_TRANSACTION : SYNC_TRANSACTION | NO_META_SYNC)
    if (!durable) this.unflushed = true
  }

  /** Set when a committed transaction may not be flushed yet (see commitSync and the top of the file). */
  unflushed = false

  /** Returns once every committed transaction is flushed to disk (see the top of the file). */
  flushed (): void {
    if (!this.unflushed) return
    this.unflushed = false
    this.advance()
  }

  async close (): Promise<void> {
    this.flushed()
    await this.root.close()
    debug('closed %s', this.dir)
  }
}

/** A new, empty volume record. */
export function newVolume (id: number, name: string, now: number): VolumeRecord {
  return {
    id, name, gen: 1, lastSnapGen: 0, nextIno: ROOT_INO + 1, created: now,
    used: 0, written: 0, snapshotBytes: 0, maxSnapshots: null, maxSnapshotBytes: null
  }
}

function openEnvironment (dir: string): RootDatabase {
  return open({
    path: dir,
    maxDbs: 16,
    // The store is a directory (data.mdb and lock.mdb inside), whatever its name looks like:
    // lmdb-js would take a name with a dot for a single-file environment.
    noSubdir: false,
    // Keys of records are binary; lmdb-js's default key size limit (1978 bytes) fits
    // vol + ino + a 255-byte name comfortably.
    compression: false,
    // Data durable only at `flushed`; fsync waits for it (DESIGN.md, lmdb-js facts).
    overlappingSync: true
  })
}
