from bridge_ray.cli import main

main()
