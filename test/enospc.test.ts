/**
 * A full disk: when the store's disk fills up, the writer gets ENOSPC (not a dead mount), the
 * daemon keeps serving, deleting a file makes room again once the removal is committed, and the
 * store stays consistent
 * (`snapfs check` passes, the data written after the failure reads back after a remount).
 * The store lives on a small ext4 image mounted through a loop device.
 */
import t from 'tap'
import { mkdtemp, rm, mkdir, open, readFile, writeFile } from 'node:fs/promises'
import { randomBytes } from 'node:crypto'
import { join } from 'node:path'
import { run, snapfs } from './helpers/mount.js'

t.setTimeout(5 * 60_000)

t.test('a full disk gives the writer ENOSPC and loses nothing', async t => {
  const dir = await mkdtemp('/var/tmp/snapfs-enospc-')
  const image = join(dir, 'disk.img')
  const disk = join(dir, 'disk')
  const store = join(disk, 'store')
  const mnt = join(dir, 'mnt')
  await mkdir(disk)
  t.teardown(async () => {
    await snapfs(['umount', '--force', mnt])
    await run('umount', [disk])
    await rm(dir, { recursive: true, force: true })
  })
  t.equal((await run('truncate', ['-s', '96M', image])).code, 0, 'image made')
  t.equal((await run('mkfs.ext4', ['-q', image])).code, 0, 'ext4 made')
  t.equal((await run('mount', ['-o', 'loop', image, disk])).code, 0, 'image mounted')
  t.equal((await snapfs(['init', store])).code, 0, 'store made')
  const mount = await snapfs(['mount', store, mnt, '--cache-size', '16M'])
  t.equal(mount.code, 0, mount.stderr)

  const flood = await run('dd', ['if=/dev/urandom', `of=${join(mnt, 'flood')}`, 'bs=1M', 'count=150', 'conv=fsync'])
  t.not(flood.code, 0, 'the flood fails')
  t.match(flood.stderr, /No space left on device/, 'with ENOSPC')
  t.notMatch(flood.stderr, /Transport endpoint is not connected/, 'and the mount is alive')

  await rm(join(mnt, 'flood'))
  // The room comes back once the removal is committed: within --dirty-age, or at once on an
  // fsync (of the directory here). A write committed together with the removal cannot use it yet:
  // LMDB reuses the pages a transaction frees only after it.
  const root = await open(mnt, 'r')
  await root.sync()
  await root.close()
  const data = randomBytes(3 * 1024 * 1024)
  await writeFile(join(mnt, 'after'), data)
  t.same(await readFile(join(mnt, 'after')), data, 'room again after the delete')

  const umount = await snapfs(['umount', mnt])
  t.equal(umount.code, 0, umount.stderr)
  const check = await snapfs(['check', store])
  t.equal(check.code, 0, check.stdout)
  t.match(check.stdout, /^ok:/m, 'the store is consistent')
  t.equal((await snapfs(['mount', store, mnt])).code, 0, 'remounted')
  t.same(await readFile(join(mnt, 'after')), data, 'the data written after the failure is there')
})
