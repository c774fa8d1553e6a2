/**
 * The store's format and its checker: `snapfs init` makes a store that `snapfs check` passes and
 * `snapfs info` describes; golden stores of formats v1 and v2 (test/fixtures/store-v1 and
 * store-v2, each written by the code of its version) are upgraded when opened and keep their files
 * and snapshots; a directory that is not a store, and a store of a newer format, are
 * refused with one clear line and left untouched; `snapfs check` passes a store after real use
 * and finds the damage in a deliberately broken one (a lost block, a wrong link count).
 */
import t, { type Test } from 'tap'
import { mkdtemp, rm, writeFile, readdir, mkdir, copyFile, readFile, readlink, stat } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { open } from 'lmdb'
import { freshStore, mountFresh, snapctl, snapfs } from './helpers/mount.js'

/** Stores written by earlier versions of snapfs, one per format version. */
const GOLDEN = join(dirname(fileURLToPath(import.meta.url)), 'fixtures')

t.setTimeout(5 * 60_000)

const scratch = async (): Promise<string> => {
  const dir = await mkdtemp('/var/tmp/snapfs-store-test-')
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  return dir
}

/** Opens a stopped store's LMDB environment directly, as a damaged disk would leave it. */
function openRaw (store: string): ReturnType<typeof open> {
  return open({ path: store, noSubdir: false, maxDbs: 16 })
}

t.test('init makes a store that check passes and info describes', async t => {
  const dir = await scratch()
  const store = join(dir, 'store.with.dots')
  const init = await snapfs(['init', store, '--block-size', '32K'])
  t.equal(init.code, 0, init.stderr)
  t.match(init.stdout, /format v3, 32\.0 KiB blocks, volume main/)
  const check = await snapfs(['check', store])
  t.equal(check.code, 0, check.stdout + check.stderr)
  t.match(check.stdout, /^ok: 1 inodes/m)
  const info = await snapfs(['info', store, '--json'])
  t.equal(info.code, 0, info.stderr)
  const parsed = JSON.parse(info.stdout) as { format: number, blockSize: number, volumes: Array<{ name: string }> }
  t.equal(parsed.format, 3)
  t.equal(parsed.blockSize, 32 * 1024)
  t.same(parsed.volumes.map(v => v.name), ['main'])
  const again = await snapfs(['init', store])
  t.not(again.code, 0, 'init refuses an existing store')
  t.match(again.stderr, /is already a store/)
})

t.test('a directory that is not a store is refused with one line and left alone', async t => {
  const dir = await scratch()
  const notStore = join(dir, 'photos')
  await mkdir(notStore)
  await writeFile(join(notStore, 'a.jpg'), 'not a store')
  const mnt = join(dir, 'mnt')
  const mount = await snapfs(['mount', notStore, mnt, '--foreground'])
  t.not(mount.code, 0)
  t.match(mount.stderr, /^snapfs: .*photos is not a snapfs store/)
  t.equal(mount.stderr.trim().split('\n').length, 1, 'one line')
  t.same(await readdir(notStore), ['a.jpg'], 'nothing was written into it')
  const init = await snapfs(['init', notStore])
  t.not(init.code, 0)
  t.match(init.stderr, /is not empty/)
  const missing = await snapfs(['check', join(dir, 'nowhere')])
  t.not(missing.code, 0)
  t.match(missing.stderr, /does not exist \(create it with: snapfs init/)
})

t.test('a store of a newer format is refused, not opened', async t => {
  const dir = await scratch()
  const store = join(dir, 'store')
  t.equal((await snapfs(['init', store])).code, 0)
  const raw = openRaw(store)
  const meta = raw.openDB({ name: 'meta', encoding: 'msgpack' })
  const format = meta.get('format') as Record<string, unknown>
  await meta.put('format', { ...format, version: 99 })
  await raw.close()
  for (const args of [['check', store], ['info', store], ['mount', store, join(dir, 'mnt'), '--foreground']]) {
    const result = await snapfs(args)
    t.not(result.code, 0, `${args[0]} fails`)
    t.match(result.stderr, /store format v99, newer than this snapfs \(reads up to v3\)/, `${args[0]} says why`)
  }
})

t.test('check passes a store after real use, and finds a lost block and a wrong link count', async t => {
  const m = await mountFresh(t)
  await mkdir(join(m.mnt, 'dir'))
  await writeFile(join(m.mnt, 'dir', 'file'), Buffer.alloc(300_000, 7))
  await writeFile(join(m.mnt, 'small'), 'hello')
  t.equal(await m.umount(), 0, 'unmounted')
  const clean = await snapfs(['check', m.store])
  t.equal(clean.code, 0, clean.stdout)
  t.match(clean.stdout, /^ok: 4 inodes, 3 entries, 6 blocks checked/m)

  const raw = openRaw(m.store)
  const blocks = raw.openDB({ name: 'blocks', keyEncoding: 'binary', encoding: 'binary' })
  const inodes = raw.openDB({ name: 'inodes', keyEncoding: 'binary', encoding: 'msgpack' })
  const firstBlock = [...blocks.getKeys({ limit: 1 })][0] as Buffer
  await blocks.remove(firstBlock)
  const [small] = [...inodes.getRange()].filter(({ value }) => (value as { size: number }).size === 5)
  await inodes.put(small.key as Buffer, { ...(small.value as object), nlink: 3 })
  await raw.close()

  const damaged = await snapfs(['check', m.store])
  t.equal(damaged.code, 2, 'exit status 2 for a damaged store')
  t.match(damaged.stdout, /problem: block \d+ is referenced but missing/)
  t.match(damaged.stdout, /problem: inode \d+ \(volume 1\) has nlink 3, but 1 links exist/)
  t.match(damaged.stdout, /^damaged:/m)
})

/** A fresh site whose store is a copy of golden store `name`, which `snapfs check` passes as it is. */
async function goldenSite (t: Test, name: string): Promise<Awaited<ReturnType<typeof freshStore>>> {
  const site = await freshStore(t)
  await rm(site.store, { recursive: true })
  await mkdir(site.store, { mode: 0o700 })
  await copyFile(join(GOLDEN, name, 'data.mdb'), join(site.store, 'data.mdb'))
  const check = await snapfs(['check', site.store])
  t.equal(check.code, 0, check.stdout + check.stderr)
  return site
}

t.test('a golden v1 store is upgraded when opened: same files, check passes, snapshots work', async t => {
  const site = await goldenSite(t, 'store-v1')
  const info = JSON.parse((await snapfs(['info', site.store, '--json'])).stdout) as { format: number, volumes: Array<{ used: number, written: number }> }
  t.equal(info.format, 3, 'opened as format v3')
  t.equal(info.volumes[0].used, info.volumes[0].written, 'all its data counts as written since the (absent) latest snapshot')
  t.teardown(async () => { await snapfs(['umount', '--force', site.mnt]) })
  const mount = await snapfs(['mount', site.store, site.mnt])
  t.equal(mount.code, 0, mount.stderr)
  const docs = join(site.mnt, 'docs')
  t.equal(await readFile(join(docs, 'readme'), 'utf8'), 'golden v1 store\n')
  t.equal(await readFile(join(docs, 'big'), 'utf8'), 'a'.repeat(200000))
  t.equal((await stat(join(docs, 'hard'))).ino, (await stat(join(docs, 'readme'))).ino, 'the hard link shares the inode')
  t.equal(await readlink(join(docs, 'link')), 'readme')
  t.equal((await stat(join(docs, 'big'))).mode & 0o777, 0o640)
  const create = await snapctl(['-C', site.mnt, 'create', 'after-upgrade'])
  t.equal(create.code, 0, create.stderr)
  await writeFile(join(docs, 'readme'), 'changed\n')
  t.equal(await readFile(join(site.mnt, '.snapshots', 'after-upgrade', 'docs', 'readme'), 'utf8'), 'golden v1 store\n')
  t.equal((await snapfs(['umount', site.mnt])).code, 0)
  const after = await snapfs(['check', site.store])
  t.equal(after.code, 0, after.stdout + after.stderr)
})

t.test('a golden v2 store is upgraded when opened: same files, its snapshot still browsable, check passes', async t => {
  const site = await goldenSite(t, 'store-v2')
  const info = JSON.parse((await snapfs(['info', site.store, '--json'])).stdout) as { format: number }
  t.equal(info.format, 3, 'opened as format v3')
  t.teardown(async () => { await snapfs(['umount', '--force', site.mnt]) })
  const mount = await snapfs(['mount', site.store, site.mnt])
  t.equal(mount.code, 0, mount.stderr)
  const docs = join(site.mnt, 'docs')
  const golden = join(site.mnt, '.snapshots', 'golden', 'docs')
  t.equal(await readFile(join(docs, 'readme'), 'utf8'), 'changed after the snapshot\n')
  t.equal(await readFile(join(golden, 'readme'), 'utf8'), 'golden v2 store\n', 'the snapshot keeps the old bytes')
  t.equal(await readFile(join(golden, 'big'), 'utf8'), 'b'.repeat(200000))
  t.equal((await stat(join(golden, 'hard'))).ino, (await stat(join(golden, 'readme'))).ino, 'the hard link shares the inode')
  t.equal(await readlink(join(golden, 'link')), 'readme')
  const rollback = await snapctl(['-C', site.mnt, 'rollback', '--no-safety-snapshot', 'golden'])
  t.equal(rollback.code, 0, rollback.stderr)
  t.equal(await readFile(join(docs, 'readme'), 'utf8'), 'golden v2 store\n', 'rolled back to the v2 snapshot')
  t.equal((await snapfs(['umount', site.mnt])).code, 0)
  const after = await snapfs(['check', site.store])
  t.equal(after.code, 0, after.stdout + after.stderr)
})
